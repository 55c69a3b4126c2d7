-- jetbook read model. Every table is WITHOUT ROWID with an explicit key, so its
-- content (and a hash of it) does not depend on the batch sizes that built it.
PRAGMA journal_mode = WAL;

CREATE TABLE IF NOT EXISTS projection_position (
    name      TEXT PRIMARY KEY,
    stream    TEXT NOT NULL,
    last_seq  INTEGER NOT NULL   -- the last JB_EVT sequence folded in; written in the same transaction as the rows
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS markets (
    market_id        TEXT PRIMARY KEY,
    base             TEXT NOT NULL,
    quote            TEXT NOT NULL,
    created_seq      INTEGER NOT NULL,
    created_ts       INTEGER NOT NULL,
    last_trade_id    INTEGER NOT NULL DEFAULT 0,
    last_price       INTEGER,
    volume           INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS orders (
    market_id        TEXT NOT NULL,
    order_id         INTEGER NOT NULL,
    account_id       TEXT NOT NULL,
    client_order_id  TEXT NOT NULL,
    side             TEXT NOT NULL,
    price            INTEGER NOT NULL,
    qty              INTEGER NOT NULL,
    tif              TEXT NOT NULL,
    filled_qty       INTEGER NOT NULL DEFAULT 0,
    cancelled_qty    INTEGER NOT NULL DEFAULT 0,
    created_seq      INTEGER NOT NULL,
    created_ts       INTEGER NOT NULL,
    updated_seq      INTEGER NOT NULL,
    open_qty         INTEGER GENERATED ALWAYS AS (qty - filled_qty - cancelled_qty) VIRTUAL,
    status           TEXT GENERATED ALWAYS AS (
        CASE
            WHEN cancelled_qty > 0 THEN 'cancelled'
            WHEN filled_qty >= qty THEN 'filled'
            WHEN filled_qty > 0 THEN 'partially_filled'
            ELSE 'open'
        END) VIRTUAL,
    PRIMARY KEY (market_id, order_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS orders_by_account ON orders (account_id, market_id, order_id);

CREATE TABLE IF NOT EXISTS trades (
    market_id              TEXT NOT NULL,
    trade_id               INTEGER NOT NULL,
    price                  INTEGER NOT NULL,
    qty                    INTEGER NOT NULL,
    maker_order_id         INTEGER NOT NULL,
    taker_order_id         INTEGER NOT NULL,
    maker_account          TEXT NOT NULL,
    taker_account          TEXT NOT NULL,
    taker_side             TEXT NOT NULL,
    maker_client_order_id  TEXT NOT NULL,
    taker_client_order_id  TEXT NOT NULL,
    seq                    INTEGER NOT NULL,
    cmd_seq                INTEGER NOT NULL,
    ts                     INTEGER NOT NULL,
    PRIMARY KEY (market_id, trade_id)
) WITHOUT ROWID;

-- Aggregated resting quantity per price level: the order book as a table.
CREATE TABLE IF NOT EXISTS book_levels (
    market_id  TEXT NOT NULL,
    side       TEXT NOT NULL,
    price      INTEGER NOT NULL,
    qty        INTEGER NOT NULL,
    orders     INTEGER NOT NULL,
    PRIMARY KEY (market_id, side, price)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS rejections (
    seq              INTEGER PRIMARY KEY,
    cmd_seq          INTEGER NOT NULL,
    ts               INTEGER NOT NULL,
    market_id        TEXT NOT NULL,
    account_id       TEXT,
    command_type     TEXT,
    client_order_id  TEXT,
    order_id         INTEGER,
    reason           TEXT NOT NULL,
    detail           TEXT NOT NULL
) WITHOUT ROWID;

CREATE VIEW IF NOT EXISTS top_of_book AS
SELECT m.market_id,
       b.price AS bid_price, b.qty AS bid_qty,
       a.price AS ask_price, a.qty AS ask_qty
FROM markets m
LEFT JOIN book_levels b ON b.market_id = m.market_id AND b.side = 'buy'
     AND b.price = (SELECT MAX(price) FROM book_levels WHERE market_id = m.market_id AND side = 'buy')
LEFT JOIN book_levels a ON a.market_id = m.market_id AND a.side = 'sell'
     AND a.price = (SELECT MIN(price) FROM book_levels WHERE market_id = m.market_id AND side = 'sell');
