with

source as (
    select * from {{ source('raw', 'orders') }}
),

renamed as (
    select
        cast(id as bigint) as order_id,
        cast(user_id as bigint) as user_id,
        status,
        currency,
        cast(total as {{ nightshift.nightshift_decimal(12, 2) }}) as total,
        cast(created_at as {{ nightshift.type_timestamptz() }}) as created_at,
        cast(updated_at as {{ nightshift.type_timestamptz() }}) as updated_at,
        _run_id as run_id,
        _loaded_at as loaded_at
    from source
)

select * from renamed
