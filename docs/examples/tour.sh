#!/usr/bin/env bash
# Every command of protocol v1.1 through `jetbook submit`, against a running stack: the source of
# the examples in docs/QUICKSTART.md and docs/PROTOCOL.md. Run it once on a fresh stack (the market ids are fixed):
#
#   jetbook up --data-dir "$(mktemp -d)" --port 0        # prints the NATS URL
#   JETBOOK_NATS_URL=nats://127.0.0.1:PORT bash docs/examples/tour.sh
#
# Each step prints the command line, then the events it caused as JSON lines (`jetbook submit`
# prints `cmd_seq N` on stderr and exits 1 when the command was rejected; the tour goes on).
set -u
: "${JETBOOK_NATS_URL:?set JETBOOK_NATS_URL to the NATS URL of the stack}"
JB=${JETBOOK:-jetbook}

step() {
    echo
    echo "\$ jetbook submit $*"
    $JB submit "$@" 2>&1
    return 0
}

echo "### pair market ETH-USDC"
step create-market -m ETH-USDC --base ETH --quote USDC --tick-size 100 --min-price 100 --max-qty 1000 --band-bps 1000
step place -m ETH-USDC -a alice --side sell --price 300000 --qty 10 --client-order-id a1
step place -m ETH-USDC -a alice --side sell --price 301000 --qty 5 --client-order-id a2
step place -m ETH-USDC -a bob --side buy --price 300500 --qty 15 --client-order-id b1
step place -m ETH-USDC -a carol --side buy --price 300000 --qty 3 --tif post_only --client-order-id c1
step place -m ETH-USDC -a carol --side buy --price 301000 --qty 1 --tif post_only --client-order-id c2
step place -m ETH-USDC -a dave --side sell --price 300000 --qty 4 --tif fok --client-order-id d1
step place -m ETH-USDC -a dave --side sell --price 300000 --qty 10 --tif fok --client-order-id d2
step place -m ETH-USDC -a dave --side sell --price 300000 --qty 10 --tif ioc --client-order-id d3
step place -m ETH-USDC -a erin --side buy --order-type market --qty 3 --protection-price 301000 --client-order-id e1
step place -m ETH-USDC -a erin --side buy --order-type market --qty 5 --client-order-id e2
step place -m ETH-USDC -a erin --side buy --price 300050 --qty 1 --client-order-id e3
step place -m ETH-USDC -a erin --side buy --price 400000 --qty 1 --client-order-id e3
step place -m ETH-USDC -a erin --side buy --price 300000 --qty 1001 --client-order-id e3
step place -m ETH-USDC -a erin --side back --price 300000 --qty 1 --client-order-id e3
step place -m ETH-USDC -a bob --side buy --price 300000 --qty 1 --client-order-id b1

echo
echo "### self-trade prevention"
step place -m ETH-USDC -a alice --side sell --price 302000 --qty 2 --client-order-id a3
step place -m ETH-USDC -a gina --side sell --price 302000 --qty 2 --client-order-id g1
step place -m ETH-USDC -a alice --side buy --price 302000 --qty 3 --client-order-id a4
step place -m ETH-USDC -a alice --side sell --price 302000 --qty 2 --stp cancel_newest --client-order-id a5
step place -m ETH-USDC -a alice --side sell --price 302000 --qty 2 --stp cancel_both --client-order-id a6

echo
echo "### amend and cancel"
step place -m ETH-USDC -a alice --side sell --price 303000 --qty 10 --client-order-id a7
step place -m ETH-USDC -a ian --side sell --price 303000 --qty 5 --client-order-id i1
step amend -m ETH-USDC -a alice --client-order-id a7 --qty 6
step amend -m ETH-USDC -a alice --client-order-id a7 --price 303500
step amend -m ETH-USDC -a alice --client-order-id a7 --qty 8
step place -m ETH-USDC -a jack --side buy --price 302500 --qty 4 --client-order-id j1
step amend -m ETH-USDC -a alice --client-order-id a7 --price 302500
step amend -m ETH-USDC -a alice --client-order-id a7 --price 302500 --qty 4
step amend -m ETH-USDC -a alice --client-order-id a1 --qty 1
step amend -m ETH-USDC -a bob --client-order-id a7 --qty 1
step cancel -m ETH-USDC -a alice --client-order-id a7
step cancel -m ETH-USDC -a alice --client-order-id a7

echo
echo "### risk limits"
step risk-limits -m ETH-USDC -a kim --max-order-qty 10 --max-open-orders 2 --max-open-exposure 2000000
step place -m ETH-USDC -a kim --side buy --price 290000 --qty 11 --client-order-id k1
step place -m ETH-USDC -a kim --side buy --price 290000 --qty 3 --client-order-id k1
step place -m ETH-USDC -a kim --side buy --price 290000 --qty 5 --client-order-id k2
step place -m ETH-USDC -a kim --side buy --price 290000 --qty 2 --client-order-id k2
step place -m ETH-USDC -a kim --side buy --price 290000 --qty 1 --client-order-id k3
step cancel-all -m ETH-USDC -a kim --side buy
step cancel-all -m ETH-USDC -a kim

echo
echo "### odds market EPL-1"
step create-market -m EPL-1 --kind odds --quote GBP --runner HOME=Arsenal --runner AWAY=Chelsea
step add-runner -m EPL-1 DRAW Draw
step place -m EPL-1 -a alice --runner HOME --side back --price 250 --qty 100 --client-order-id oa1
step place -m EPL-1 -a bob --runner HOME --side lay --price 260 --qty 60 --client-order-id ob1
step place -m EPL-1 -a bob --runner HOME --side lay --price 251 --qty 10 --client-order-id ob2
step place -m EPL-1 -a bob --runner HOME --side buy --price 250 --qty 10 --client-order-id ob2
step place -m EPL-1 -a bob --side lay --price 250 --qty 10 --client-order-id ob2
step place -m EPL-1 -a bob --runner NOBODY --side lay --price 250 --qty 10 --client-order-id ob2
step place -m EPL-1 -a carol --runner DRAW --side lay --price 340 --qty 50 --persistence persist --client-order-id oc1
step place -m EPL-1 -a dave --runner DRAW --side back --price 360 --qty 20 --client-order-id od1
step risk-limits -m EPL-1 -a erin --max-open-exposure 10000
step place -m EPL-1 -a erin --runner AWAY --side lay --price 300 --qty 50 --client-order-id oe1
step place -m EPL-1 -a erin --runner AWAY --side lay --price 300 --qty 1 --client-order-id oe2
step place -m ETH-USDC -a zoe --side buy --price 295000 --qty 1 --client-order-id z1
step place -m EPL-1 -a zoe --runner AWAY --side back --price 400 --qty 10 --persistence persist --client-order-id z2
step cancel-all -a zoe

echo
echo "### lifecycle: odds in play, close, settle"
step market-state -m EPL-1 await-live
step place -m EPL-1 -a frank --runner DRAW --side back --price 340 --qty 50 --client-order-id of1
step market-state -m EPL-1 go-live
step market-state -m EPL-1 go-live
step place -m EPL-1 -a frank --runner DRAW --side back --price 340 --qty 50 --client-order-id of2
step settle -m EPL-1 --winner HOME
step market-state -m EPL-1 close
step settle -m EPL-1 --winner NOBODY
step settle -m EPL-1 --price 100
step settle -m EPL-1 --winner HOME

echo
echo "### lifecycle: pair suspend, halt, close, settle"
step market-state -m ETH-USDC suspended
step place -m ETH-USDC -a zoe --side buy --price 295000 --qty 1 --client-order-id z3
step market-state -m ETH-USDC halted
step cancel -m ETH-USDC -a jack --client-order-id j1
step market-state -m ETH-USDC halted
step market-state -m ETH-USDC open
step market-state -m ETH-USDC close
step settle -m ETH-USDC --price 305000

echo
echo "### void"
step create-market -m RACE-7 --kind odds --quote GBP --runner R1=Comet --runner R2=Dancer
step place -m RACE-7 -a alice --runner R1 --side back --price 500 --qty 20 --client-order-id r1
step place -m RACE-7 -a bob --runner R1 --side lay --price 500 --qty 5 --client-order-id r2
step market-state -m RACE-7 void
step market-state -m RACE-7 open
step risk-limits -m RACE-7 -a alice --max-order-qty 1

echo
echo "### settlement P&L, pair"
step create-market -m BTC-USD --base BTC --quote USD
step place -m BTC-USD -a alice --side sell --price 30000 --qty 2 --client-order-id s1
step place -m BTC-USD -a bob --side buy --price 30000 --qty 2 --client-order-id s2
step place -m BTC-USD -a bob --side sell --price 31000 --qty 1 --client-order-id s3
step place -m BTC-USD -a carol --side buy --price 31000 --qty 1 --client-order-id s4
step market-state -m BTC-USD close
step settle -m BTC-USD --price 32000
