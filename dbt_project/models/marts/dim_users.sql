with

users as (
    select * from {{ ref('stg_users') }}
),

final as (
    select
        user_id,
        email,
        full_name,
        region as source_region,
        {{ nightshift.coalesce_blank('region', 'unknown') }} as region,
        created_at,
        updated_at
    from users
)

select * from final
