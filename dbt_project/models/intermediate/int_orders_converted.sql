{#- Each order with its business day (created_at in var report_tz), its user's current
    region ('unknown' when NULL, blank or the user is missing), and its total in USD cents
    at that day's rate (NULL when the rate is missing: the singular test
    assert_fx_rate_exists_for_every_counted_order fails the build for counted orders). -#}
with

orders as (
    select * from {{ ref('stg_orders') }}
),

users as (
    select user_id, region from {{ ref('stg_users') }}
),

fx_rates as (
    select rate_date, currency, rate from {{ ref('stg_fx_rates') }}
),

orders_dated as (
    select
        orders.*,
        {{ nightshift.business_day('orders.created_at') }} as business_date
    from orders
),

final as (
    select
        orders_dated.order_id,
        orders_dated.user_id,
        orders_dated.business_date,
        {{ nightshift.coalesce_blank('users.region', 'unknown') }} as region,
        orders_dated.status,
        orders_dated.currency,
        orders_dated.total,
        fx_rates.rate as fx_rate,
        {{ nightshift.usd_cents_half_up('orders_dated.total', 'fx_rates.rate') }} as usd_cents,
        orders_dated.status <> 'cancelled' as is_counted,
        orders_dated.created_at,
        orders_dated.updated_at
    from orders_dated
    left join users
        on orders_dated.user_id = users.user_id
    left join fx_rates
        on orders_dated.business_date = fx_rates.rate_date
        and orders_dated.currency = fx_rates.currency
)

select * from final
