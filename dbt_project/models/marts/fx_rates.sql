with

fx_rates as (
    select * from {{ ref('stg_fx_rates') }}
),

final as (
    select
        rate_date,
        currency,
        base_currency,
        rate
    from fx_rates
)

select * from final
