from jetbook.cli import app

app()
