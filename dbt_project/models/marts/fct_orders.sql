{#- One row per order. Incremental (macros/restatement.sql): with var run_id, only the
    orders and business days that changed are rebuilt: the incremental strategy
    delete_stale+insert (macros/delete_stale_insert.sql) deletes them
    (fct_orders_stale_rows) and does delete+insert on order_id, and only the items of
    their orders are ranked for the category (the logic of int_orders_categorized,
    macros/order_categories.sql); without run_id, on --full-refresh, or when the table
    does not exist it is rebuilt in full. -#}
{{
    config(
        materialized='incremental',
        incremental_strategy='delete_stale+insert',
        unique_key='order_id',
        meta={'stale_rows': 'fct_orders_stale_rows'},
        on_schema_change='fail',
        full_refresh=(none if nightshift.nightly_run() else true),
    )
}}
-- depends_on: {{ source('ops', 'restated_days') }}, {{ source('ops', 'restated_orders') }}
-- depends_on: {{ ref('stg_fx_rates') }}
-- depends_on: {{ ref('stg_orders') }}, {{ ref('stg_order_items') }}, {{ ref('stg_products') }}
with
{% if nightshift.nightly_is_incremental() %}
days_to_restate as (
    {{ nightshift.fct_orders_days_to_restate(this) | indent(4) }}
),

orders_to_restate as (
    {{ nightshift.fct_orders_orders_to_restate() | indent(4) }}
),
{% endif %}
orders_converted as (
    select * from {{ ref('int_orders_converted') }}
    {%- if nightshift.nightly_is_incremental() %}
    -- by order_id, a column of the source scan: DuckDB filters before the joins and the
    -- cents (a filter on the computed business_date ran after them, on every order)
    where order_id in (
        select order_id
        from {{ ref('stg_orders') }}
        where {{ nightshift.business_day('created_at') }} in (
                select business_date from days_to_restate
            )
            -- a day missing from the table, or left without rows by the strategy's
            -- deletes of the orders to restate (they run after this SELECT), is
            -- rebuilt whole
            or {{ nightshift.business_day('created_at') }} not in (
                select distinct stored.business_date
                from {{ this }} as stored
                where not exists (
                    select 1 from orders_to_restate
                    where orders_to_restate.order_id = stored.order_id
                )
            )
        union
        select order_id from orders_to_restate
    )
    {%- endif %}
),

orders_categorized as (
    {%- if nightshift.nightly_is_incremental() %}
    {{ nightshift.order_categories(
        'orders_converted', ref('stg_order_items'), ref('stg_products'), restrict_items=true
    ) | indent(4) }}
    {%- else %}
    select order_id, category from {{ ref('int_orders_categorized') }}
    {%- endif %}
),

final as (
    -- explicit string type: the incremental insert must match the table's column types
    -- (PostgreSQL would otherwise give text, not the contract's varchar)
    select
        orders_converted.order_id,
        orders_converted.user_id,
        orders_converted.business_date,
        cast(orders_converted.region as {{ nightshift.type_varchar() }}) as region,
        cast(orders_categorized.category as {{ nightshift.type_varchar() }}) as category,
        cast(orders_converted.status as {{ nightshift.type_varchar() }}) as status,
        cast(orders_converted.currency as {{ nightshift.type_varchar() }}) as currency,
        orders_converted.total,
        orders_converted.fx_rate,
        orders_converted.usd_cents,
        orders_converted.is_counted,
        orders_converted.created_at,
        orders_converted.updated_at
    from orders_converted
    inner join orders_categorized
        on orders_converted.order_id = orders_categorized.order_id
)

select * from final
