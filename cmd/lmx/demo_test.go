package main

import (
	"bytes"
	"regexp"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestDemo(t *testing.T) {
	var out bytes.Buffer
	require.NoError(t, demo(t.Context(), &out))
	got := out.String()
	assert.Regexp(t, regexp.MustCompile(`(?s)worker-1 got.*worker-2 got.*worker-3 got`), got, "workers out of FIFO order")
	assert.Contains(t, got, "download 3: lmx: key is locked")
	assert.Contains(t, got, "lease ended: lmx: lease lost: lmx: lease expired")
	assert.Regexp(t, `stalled holder writes with token \d+: lmx: stale fencing token`, got)
	assert.Contains(t, got, "broker's own TryLock: lmx: key is locked")
	assert.Regexp(t, `broker   got deploy when the client let go`, got)
}
