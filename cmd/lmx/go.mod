module github.com/lmx-go/lmx/cmd/lmx

go 1.25.0

require (
	github.com/lmx-go/lmx v0.1.0
	github.com/oklog/ulid/v2 v2.1.2
	github.com/stretchr/testify v1.12.1
)

require go.yaml.in/yaml/v3 v3.0.5 // indirect
