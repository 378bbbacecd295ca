{#- A counted order whose currency has no rate for its business day fails the build
    (it is never converted at 0 or 1): one row per currency and day, with the number of
    counted orders and an order to look at. dbt stores the rows (store_failures) in
    `ops.dbt_test__<this test>` of the run's build, where warehouse/dbt_runner.py reads
    the first few into the build's error. `ops` is a schema every build has (a PostgreSQL
    build's `ops__build_<token>` is dropped with it); the table is empty when the test
    passes and never lands in `analytics`.
    It reads fct_orders, every row, every build: a scan of two stored columns. fct_orders
    holds what int_orders_converted gives for every order (a full build copies it; an
    incremental one re-inserts the restated days, which include days whose rate changed,
    arrived or went), and its fx_rate/usd_cents stay NULL where a rate was missing, so a
    day left out of the restatement is still checked. The build it fails is not
    published; sales_summary, downstream, is skipped. -#}
{{ config(
    store_failures=true,
    schema='ops',
    alias='dbt_test__assert_fx_rate_exists_for_every_counted_order'
) }}

with

missing_rates as (
    select
        currency,
        business_date,
        count(*) as order_count,
        min(order_id) as example_order_id
    from {{ ref('fct_orders') }}
    where is_counted and usd_cents is null
    {#- days after the run's business day are not published, so need no rate yet #}
    {%- if nightshift.run_setting('through_date') %}
        and business_date <= cast('{{ nightshift.run_setting("through_date") }}' as date)
    {%- endif %}
    group by currency, business_date
)

select *
from missing_rates
order by business_date, currency
