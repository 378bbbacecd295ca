with

source as (
    select * from {{ source('raw', 'order_items') }}
),

renamed as (
    select
        cast(id as bigint) as order_item_id,
        cast(order_id as bigint) as order_id,
        cast(product_id as bigint) as product_id,
        cast(quantity as bigint) as quantity,
        cast(unit_price as {{ nightshift.nightshift_decimal(12, 2) }}) as unit_price,
        cast(updated_at as {{ nightshift.type_timestamptz() }}) as updated_at,
        _run_id as run_id,
        _loaded_at as loaded_at
    from source
)

select * from renamed
