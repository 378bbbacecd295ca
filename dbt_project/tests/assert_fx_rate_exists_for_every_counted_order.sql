{#- A counted order whose currency has no rate for its business day fails the build
    (it is never converted at 0 or 1). On DuckDB the error names the currency, the day and an order to look at.
    It reads fct_orders, every row, every build: a scan of two stored columns. fct_orders holds what int_orders_converted gives for every order (a full
    build copies it; an incremental one re-inserts the restated days, which include days
    whose rate changed, arrived or went), and its fx_rate/usd_cents stay NULL where a rate
    was missing, so a day left out of the restatement is still checked. The build it fails
    is not published; sales_summary, downstream, is skipped. -#}
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
where {{ nightshift.raise_for_row(
    "'no FX rate for currency ' || coalesce(currency, 'NULL') || ' on business day '"
    ~ " || cast(business_date as varchar) || ' (' || cast(order_count as varchar)"
    ~ " || ' counted orders, e.g. order ' || cast(example_order_id as varchar) || ')'"
) }}
