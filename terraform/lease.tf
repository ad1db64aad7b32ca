# The control loops' lease: one item per group, taken and renewed with conditional writes (see
# controller/src/aws/lease.rs). Tags on the group cannot serve: they have no compare-and-set, so
# two loops could both believe they hold a tag lease and scale twice.
resource "aws_dynamodb_table" "lease" {
  name         = "${var.name}-connscale-lease"
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "group"

  attribute {
    name = "group"
    type = "S"
  }

  point_in_time_recovery {
    enabled = true # one small item: costs nothing worth counting
  }

  server_side_encryption {
    enabled = true
  }

  tags = local.tags
}
