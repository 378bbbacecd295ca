with

source as (
    select * from {{ source('raw', 'products') }}
),

renamed as (
    select
        cast(id as bigint) as product_id,
        sku,
        name as product_name,
        category,
        cast(price as {{ nightshift.nightshift_decimal(12, 2) }}) as price,
        cast(updated_at as {{ nightshift.type_timestamptz() }}) as updated_at,
        _run_id as run_id,
        _loaded_at as loaded_at
    from source
)

select * from renamed
