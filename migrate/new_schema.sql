-- The new operational schema (PostgreSQL) the demo migrates to; config/migration.yml maps
-- the old tables onto it. Changes: users split into customers + customer_contacts,
-- full_name -> name, user_id -> customer_id, money as integer cents, blank region -> NULL.
-- Idempotent (IF NOT EXISTS) so applying it twice is harmless.
CREATE TABLE IF NOT EXISTS customers (
    id bigint PRIMARY KEY,
    name text NOT NULL,
    region text CHECK (btrim(region, E' \t\n\r\f\v') <> ''),
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS customer_contacts (
    customer_id bigint PRIMARY KEY,
    email text NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS products (
    id bigint PRIMARY KEY,
    sku text NOT NULL,
    name text NOT NULL,
    category text,
    price_cents bigint NOT NULL CHECK (price_cents >= 0),
    updated_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS orders (
    id bigint PRIMARY KEY,
    customer_id bigint NOT NULL,
    status text NOT NULL,
    currency char(3) NOT NULL,
    total_cents bigint NOT NULL CHECK (total_cents >= 0),
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS order_items (
    id bigint PRIMARY KEY,
    order_id bigint NOT NULL,
    product_id bigint NOT NULL,
    quantity integer NOT NULL,
    unit_price_cents bigint NOT NULL CHECK (unit_price_cents >= 0),
    updated_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_orders_customer_id ON orders (customer_id);
CREATE INDEX IF NOT EXISTS ix_order_items_order_id ON order_items (order_id);
