{#- Published: analytics.sales_summary (docs/contract.md, "What it publishes"). -#}
{%- set through_date = nightshift.run_setting('through_date') -%}
{%- set day_pattern = '^[0-9]{4}-[0-9]{2}-[0-9]{2}$' -%}
{%- if through_date and not modules.re.match(day_pattern, through_date | string) -%}
    {{ exceptions.raise_compiler_error(
        "var through_date must be YYYY-MM-DD or null, got " ~ through_date
    ) }}
{%- endif %}
with

counted_orders as (
    select business_date, region, usd_cents
    from {{ ref('fct_orders') }}
    where is_counted
    {%- if through_date %}
        and business_date <= cast('{{ through_date }}' as date)
    {%- endif %}
),

final as (
    select
        -- `date`: the published column's name (a keyword, hence the noqa)
        business_date as date,  -- noqa: RF04
        region,
        -- exact: integer cents summed, then scaled
        cast(
            cast(sum(usd_cents) as {{ nightshift.nightshift_decimal(38, 0) }}) * 0.01
            as {{ nightshift.nightshift_decimal(18, 2) }}
        ) as total_sales_usd,
        cast(count(*) as bigint) as order_count
    from counted_orders
    group by business_date, region
)

select * from final
