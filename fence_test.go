package lmx_test

import (
	"testing"

	"github.com/lmx-go/lmx"
	"github.com/stretchr/testify/assert"
)

func TestFence(t *testing.T) {
	var f lmx.Fence
	for _, c := range []struct {
		key   string
		token uint64
		stale bool
	}{
		{"a", 10, false},
		{"a", 10, false}, // the same holder writes again
		{"a", 9, true},
		{"b", 1, false}, // keys are independent
		{"a", 11, false},
		{"a", 10, true},
	} {
		err := f.Check(c.key, c.token)
		if c.stale {
			assert.ErrorIs(t, err, lmx.ErrStaleToken, "Check(%q, %d)", c.key, c.token)
		} else {
			assert.NoError(t, err, "Check(%q, %d)", c.key, c.token)
		}
	}
	f.Forget("a")
	assert.NoError(t, f.Check("a", 1), "a forgotten key accepts any token")
}
