terraform {
  required_version = ">= 1.5.0"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 6.25" # the schema tests/provider_schema.py checks against: 6.25.0
    }
  }
}
