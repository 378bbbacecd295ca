with

source as (
    select * from {{ source('raw', 'fx_rates') }}
),

renamed as (
    select
        cast(rate_date as date) as rate_date,
        base as base_currency,
        currency,
        -- exact: the money macro relies on 18 decimals
        cast(rate as {{ nightshift.nightshift_decimal(38, 18) }}) as rate,
        _run_id as run_id,
        _loaded_at as loaded_at
    from source
)

select * from renamed
