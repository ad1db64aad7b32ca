region            = "eu-west-1"
name              = "chat"
vpc_id            = "vpc-0123456789abcdef0"
subnet_ids        = ["subnet-0aaa1111bbbb2222c", "subnet-0ddd3333eeee4444f"]
public_subnet_ids = ["subnet-0ggg5555hhhh6666i", "subnet-0jjj7777kkkk8888l"]
ami_id            = "ami-0123456789abcdef0"
instance_type     = "c7g.large"
# Where you uploaded dist/ (scripts/release), and the hash it printed.
release_url     = "https://releases.example.com/connscale/v0.1.0/"
release_sha256  = "0000000000000000000000000000000000000000000000000000000000000000"
certificate_arn = "arn:aws:acm:eu-west-1:123456789012:certificate/00000000-0000-0000-0000-000000000000"
# Pass the secrets with TF_VAR_redis_auth_token / TF_VAR_api_token, not in this file.
