-- jetbook read model. Every table is WITHOUT ROWID with an explicit key, so its
-- content (and a hash of it) does not depend on the batch sizes that built it.

CREATE TABLE IF NOT EXISTS projection_position (
    name      TEXT PRIMARY KEY,
    stream    TEXT NOT NULL,
    last_seq  INTEGER NOT NULL   -- the last JB_EVT sequence folded in; written in the same transaction as the rows
) WITHOUT ROWID;

-- The first JB_EVT sequence folded in: a model from 1 holds every order an event can refer to, and checks it.
CREATE TABLE IF NOT EXISTS projection_origin (
    name       TEXT PRIMARY KEY,
    first_seq  INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS markets (
    market_id        TEXT PRIMARY KEY,
    base             TEXT NOT NULL,
    quote            TEXT NOT NULL,
    created_seq      INTEGER NOT NULL,
    created_ts       INTEGER NOT NULL,
    last_trade_id    INTEGER NOT NULL DEFAULT 0,
    last_price       INTEGER,            -- of the newest trade (any runner, in odds markets)
    volume           INTEGER NOT NULL DEFAULT 0,
    kind             TEXT NOT NULL DEFAULT 'pair',   -- 'pair' | 'odds'
    tick_size        INTEGER NOT NULL DEFAULT 1,
    lot_size         INTEGER NOT NULL DEFAULT 1,
    min_qty          INTEGER NOT NULL DEFAULT 1,
    max_qty          INTEGER NOT NULL DEFAULT 1000000000,
    min_price        INTEGER NOT NULL DEFAULT 1,
    max_price        INTEGER NOT NULL DEFAULT 1000000000,
    band_bps         INTEGER NOT NULL DEFAULT 0,
    book_type        TEXT NOT NULL DEFAULT 'multi_runner',   -- odds: 'two_runner' also matches through the implied price
    state            TEXT NOT NULL DEFAULT 'open',   -- open | suspended | halted | closed | settled | voided
    phase            TEXT NOT NULL DEFAULT 'pre',    -- pre | in_play
    state_seq        INTEGER,                        -- JB_EVT seq of the newest state change
    settled_winner   TEXT,
    settled_price    INTEGER,
    -- exact integers only: SQLite turns an overflowing sum into a REAL, which loses precision
    CHECK (typeof(volume) = 'integer')
) WITHOUT ROWID;

-- Odds markets' runners, in creation order (position).
CREATE TABLE IF NOT EXISTS runners (
    market_id   TEXT NOT NULL,
    runner_id   TEXT NOT NULL,
    label       TEXT NOT NULL,
    added_seq   INTEGER NOT NULL,
    PRIMARY KEY (market_id, runner_id)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS orders (
    market_id        TEXT NOT NULL,
    order_id         INTEGER NOT NULL,
    account_id       TEXT NOT NULL,
    client_order_id  TEXT NOT NULL,
    side             TEXT NOT NULL,          -- buy | sell | back | lay
    price            INTEGER,                -- limit price (the newest, after amends); NULL: a market order without protection
    qty              INTEGER NOT NULL,       -- original qty, plus what amends added
    tif              TEXT NOT NULL,
    filled_qty       INTEGER NOT NULL DEFAULT 0,
    cancelled_qty    INTEGER NOT NULL DEFAULT 0,  -- cancels, unfilled rests, and what amends took off
    created_seq      INTEGER NOT NULL,
    created_ts       INTEGER NOT NULL,
    updated_seq      INTEGER NOT NULL,
    runner           TEXT NOT NULL DEFAULT '',    -- '' in pair markets
    order_type       TEXT NOT NULL DEFAULT 'limit',
    stp              TEXT NOT NULL DEFAULT 'cancel_resting',
    persistence      TEXT NOT NULL DEFAULT 'lapse',
    amends           INTEGER NOT NULL DEFAULT 0,
    open_qty         INTEGER GENERATED ALWAYS AS (qty - filled_qty - cancelled_qty) VIRTUAL,
    status           TEXT GENERATED ALWAYS AS (
        CASE
            WHEN qty - filled_qty - cancelled_qty > 0 THEN
                CASE WHEN filled_qty > 0 THEN 'partially_filled' ELSE 'open' END
            WHEN filled_qty >= qty THEN 'filled'
            ELSE 'cancelled'
        END) VIRTUAL,
    PRIMARY KEY (market_id, order_id),
    -- exact integers only: SQLite turns an overflowing sum into a REAL, which loses precision
    CHECK (typeof(qty) = 'integer' AND typeof(filled_qty) = 'integer' AND typeof(cancelled_qty) = 'integer')
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
    runner                 TEXT NOT NULL DEFAULT '',   -- the taker's runner
    -- two_runner implied fills (PROTOCOL 11.1): the maker rests on maker_runner, same side as the taker, at price;
    -- maker_qty is what its order gave up, the stakes are hundredths of a unit. Direct fills: 0 and NULLs.
    implied                INTEGER NOT NULL DEFAULT 0,
    maker_runner           TEXT,
    maker_qty              INTEGER,
    maker_stake            INTEGER,
    taker_stake            INTEGER,
    PRIMARY KEY (market_id, trade_id)
) WITHOUT ROWID;

-- Aggregated resting quantity per price level: the order book as a table (one book per runner in odds markets).
CREATE TABLE IF NOT EXISTS book_levels (
    market_id  TEXT NOT NULL,
    runner     TEXT NOT NULL,   -- '' in pair markets
    side       TEXT NOT NULL,
    price      INTEGER NOT NULL,
    qty        INTEGER NOT NULL,
    orders     INTEGER NOT NULL,
    PRIMARY KEY (market_id, runner, side, price),
    -- exact integers only: SQLite turns an overflowing sum into a REAL, which loses precision
    CHECK (typeof(qty) = 'integer' AND typeof(orders) = 'integer')
) WITHOUT ROWID;

-- What each account holds, from fills. Pairs (runner ''): net_qty and cash (price x qty units).
-- Odds, per runner: the P&L if that runner wins and if it loses, in hundredths of a stake unit.
CREATE TABLE IF NOT EXISTS positions (
    market_id   TEXT NOT NULL,
    account_id  TEXT NOT NULL,
    runner      TEXT NOT NULL,
    net_qty     INTEGER NOT NULL,
    cash        INTEGER NOT NULL,
    if_win      INTEGER NOT NULL,
    if_lose     INTEGER NOT NULL,
    PRIMARY KEY (market_id, account_id, runner),
    -- exact integers only: SQLite turns an overflowing sum into a REAL, which loses precision
    CHECK (typeof(net_qty) = 'integer' AND typeof(cash) = 'integer' AND typeof(if_win) = 'integer' AND typeof(if_lose) = 'integer')
) WITHOUT ROWID;

-- Realised P&L per account, from market_settled.
CREATE TABLE IF NOT EXISTS settlements (
    market_id   TEXT NOT NULL,
    account_id  TEXT NOT NULL,
    pnl         INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    PRIMARY KEY (market_id, account_id),
    -- exact integers only: SQLite turns an overflowing sum into a REAL, which loses precision
    CHECK (typeof(pnl) = 'integer')
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS risk_limits (
    market_id          TEXT NOT NULL,
    account_id         TEXT NOT NULL,
    max_order_qty      INTEGER,
    max_open_orders    INTEGER,
    max_open_exposure  INTEGER,
    seq                INTEGER NOT NULL,
    PRIMARY KEY (market_id, account_id)
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

-- The rejections of a sharded venue (issue 15): each shard's event stream numbers its own events, so the
-- stream is part of the key. A one-shard venue keeps using `rejections`; added without a new layout number
-- because it only adds a table (an older file gets it, empty, when opened).
CREATE TABLE IF NOT EXISTS shard_rejections (
    stream           TEXT NOT NULL,
    seq              INTEGER NOT NULL,
    cmd_seq          INTEGER NOT NULL,
    ts               INTEGER NOT NULL,
    market_id        TEXT NOT NULL,
    account_id       TEXT,
    command_type     TEXT,
    client_order_id  TEXT,
    order_id         INTEGER,
    reason           TEXT NOT NULL,
    detail           TEXT NOT NULL,
    PRIMARY KEY (stream, seq)
) WITHOUT ROWID;

-- Best bid/ask per book; for odds markets "bid" is the best lay (buy-like) and "ask" the best back.
CREATE VIEW IF NOT EXISTS top_of_book AS
SELECT k.market_id, k.runner,
       b.price AS bid_price, b.qty AS bid_qty,
       a.price AS ask_price, a.qty AS ask_qty
FROM (SELECT m.market_id, '' AS runner FROM markets m WHERE m.kind = 'pair'
      UNION ALL SELECT r.market_id, r.runner_id FROM runners r) k
LEFT JOIN book_levels b ON b.market_id = k.market_id AND b.runner = k.runner AND b.side IN ('buy', 'lay')
     AND b.price = (SELECT MAX(price) FROM book_levels
                    WHERE market_id = k.market_id AND runner = k.runner AND side IN ('buy', 'lay'))
LEFT JOIN book_levels a ON a.market_id = k.market_id AND a.runner = k.runner AND a.side IN ('sell', 'back')
     AND a.price = (SELECT MIN(price) FROM book_levels
                    WHERE market_id = k.market_id AND runner = k.runner AND side IN ('sell', 'back'));

-- 2: protocol v1.1 (runners, positions, settlements, risk limits, book per runner).
-- 3: every amount that is summed in SQL is checked to stay an INTEGER (an int64 overflow would make it a REAL);
--    projection_origin, so that a model folded from the start checks that every fill, cancel and amend has its order.
-- 4: issue 13: markets.book_type, and the trades' implied fill fields (implied, maker_runner, maker_qty, stakes).
-- A file of an older layout is refused by the worker; rebuild it with `jetbook replay rebuild`.
PRAGMA user_version = 4;
