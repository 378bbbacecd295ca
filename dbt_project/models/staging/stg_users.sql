with

source as (
    select * from {{ source('raw', 'users') }}
),

renamed as (
    select
        cast(id as bigint) as user_id,
        email,
        full_name,
        region,
        cast(created_at as {{ nightshift.type_timestamptz() }}) as created_at,
        cast(updated_at as {{ nightshift.type_timestamptz() }}) as updated_at,
        _run_id as run_id,
        _loaded_at as loaded_at
    from source
)

select * from renamed
