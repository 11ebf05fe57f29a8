# lifeboat's R2 bucket: the bucket, bucket lock rules that keep packs and
# snapshots for var.lock_days (and the repository's config and keys for
# good), a lifecycle rule aborting incomplete multipart uploads, and an API
# token that may read and write objects of this bucket only.

locals {
  # "cluster/" for a prefixed repository, "" at the bucket's root.
  prefix = var.repository_prefix == "" ? "" : "${var.repository_prefix}/"
  # R2's permission group for object read and write on chosen buckets.
  object_write_group = "Workers R2 Storage Bucket Item Write"
}

resource "cloudflare_r2_bucket" "lifeboat" {
  account_id = var.account_id
  name       = var.bucket_name
  location   = var.location
}

# R2 has no S3 object lock; bucket lock rules refuse deletes and overwrites
# of objects under a prefix until they reach an age. lifeboat never
# overwrites, and deletes only through forget (snapshots) and prune (packs,
# index objects, prune plans), which the README's settings keep outside the
# locked age. Index objects and prune plans stay unlocked: prune rewrites
# them, and every index entry can be read back from the packs' blob tables.
resource "cloudflare_r2_bucket_lock" "lifeboat" {
  account_id  = var.account_id
  bucket_name = cloudflare_r2_bucket.lifeboat.name
  rules = [
    {
      id      = "lifeboat-packs"
      enabled = true
      prefix  = "${local.prefix}data/"
      condition = {
        type            = "Age"
        max_age_seconds = var.lock_days * 86400
      }
    },
    {
      id      = "lifeboat-snapshots"
      enabled = true
      prefix  = "${local.prefix}snapshots/"
      condition = {
        type            = "Age"
        max_age_seconds = var.lock_days * 86400
      }
    },
    {
      id      = "lifeboat-config"
      enabled = true
      prefix  = "${local.prefix}config"
      condition = {
        type = "Indefinite"
      }
    },
    {
      id      = "lifeboat-keys"
      enabled = true
      prefix  = "${local.prefix}keys"
      condition = {
        type = "Indefinite"
      }
    },
  ]
}

resource "cloudflare_r2_bucket_lifecycle" "lifeboat" {
  account_id  = var.account_id
  bucket_name = cloudflare_r2_bucket.lifeboat.name
  rules = [
    {
      id      = "abort-incomplete-multipart-uploads"
      enabled = true
      conditions = {
        prefix = ""
      }
      abort_multipart_uploads_transition = {
        condition = {
          type    = "Age"
          max_age = var.abort_multipart_days * 86400
        }
      }
    },
  ]
}

data "cloudflare_account_api_token_permission_groups_list" "all" {
  account_id = var.account_id
}

# An account token allowed object read and write on this bucket alone. R2
# has no write-without-delete token; the bucket lock is what protects
# recent backups from a stolen token.
resource "cloudflare_account_token" "lifeboat" {
  account_id = var.account_id
  name       = "lifeboat-${var.bucket_name}"
  policies = [
    {
      effect = "allow"
      permission_groups = [
        for group in data.cloudflare_account_api_token_permission_groups_list.all.result :
        { id = group.id } if group.name == local.object_write_group
      ]
      resources = jsonencode({
        "com.cloudflare.edge.r2.bucket.${var.account_id}_default_${var.bucket_name}" = "*"
      })
    },
  ]
}
