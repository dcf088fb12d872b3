package orphans

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
)

var errDown = errors.New("server down")

// An orphan the server does not take is asked for again, the wait between
// rounds doubling up to 2 s, until the server takes it; one it takes at
// once goes in the first round.
func TestTakeBackRetriesWithBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		m := map[string]int{"down": 1, "up": 2}
		start := time.Now()
		var asked []time.Duration
		TakeBack(t.Context(), &mu, &m, func(ctx context.Context, k string, v int) error {
			if k == "up" {
				return nil
			}
			asked = append(asked, time.Since(start))
			if len(asked) < 8 {
				return errDown
			}
			return nil
		})
		assert.Empty(t, m)
		ms := time.Millisecond
		assert.Equal(t, []time.Duration{0, 100 * ms, 300 * ms, 700 * ms, 1500 * ms, 3100 * ms, 5100 * ms, 7100 * ms}, asked)
	})
}

// An attempt that the server does not answer ends at its 2 s deadline, and
// the next round asks again.
func TestTakeBackAttemptDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		m := map[string]int{"k": 1}
		n := 0
		start := time.Now()
		TakeBack(t.Context(), &mu, &m, func(ctx context.Context, k string, v int) error {
			n++
			if n == 1 {
				<-ctx.Done()
				assert.Equal(t, 2*time.Second, time.Since(start))
				return ctx.Err()
			}
			return nil
		})
		assert.Equal(t, 2, n)
		assert.Empty(t, m)
	})
}

// An entry that changed while it was being taken back (a newer request
// under the same key) stays, and the next round takes it back.
func TestTakeBackKeepsChangedEntry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		m := map[string]int{"k": 1}
		var took []int
		TakeBack(t.Context(), &mu, &m, func(ctx context.Context, k string, v int) error {
			took = append(took, v)
			if v == 1 {
				mu.Lock()
				m[k] = 2
				mu.Unlock()
			}
			return nil
		})
		assert.Empty(t, m)
		assert.Equal(t, []int{1, 2}, took)
	})
}

// TakeBack stops when its context is done, leaving what it could not take.
func TestTakeBackStopsWithContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		m := map[string]int{"k": 1}
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		n := 0
		TakeBack(ctx, &mu, &m, func(ctx context.Context, k string, v int) error {
			n++
			return errDown
		})
		assert.Equal(t, map[string]int{"k": 1}, m)
		assert.Equal(t, 9, n, "rounds at 0, 0.1, 0.3, 0.7, 1.5, 3.1, 5.1, 7.1 and 9.1 s")
	})
}
