"""A ledger of accounts and transfers with an overdraft rule: the second application of jetbook's machinery.

See docs/FRAMEWORK.md, which builds it step by step.
"""
