package lmx

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The lock ids' clock runs while grants come, is never more than a tick
// stale, and stops when they stop.
func TestClockStopsWhenIdle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := NewBroker()
		defer b.Close()
		grantsTellTime(t, b)
		time.Sleep(3 * time.Millisecond)
		b.clock.mu.Lock()
		defer b.clock.mu.Unlock()
		assert.Nil(t, b.clock.timer, "the clock still ticks on an idle broker")
	})
}

// Grants through a session read the system clock, so that a broker serving
// only sessions never starts its clock, whose ticks would wake the threads
// of their round trips; their lock ids tell the time all the same.
func TestClockIdleForSessions(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := NewBroker()
		defer b.Close()
		c := dialPipe(t, b)
		defer c.Close()
		grantsTellTime(t, c)
		b.clock.mu.Lock()
		defer b.clock.mu.Unlock()
		assert.Nil(t, b.clock.timer, "session grants started the clock")
	})
}

// grantsTellTime locks and unlocks a key through l a few times, less than a
// millisecond apart, and checks that each lock id tells the time of its
// grant to the millisecond.
func grantsTellTime(t *testing.T, l Locker) {
	ctx := context.Background()
	for range 5 {
		lease, err := l.Lock(ctx, "k")
		require.NoError(t, err)
		assert.WithinDuration(t, time.Now(), ulid.Time(lease.ID().Time()), time.Millisecond)
		require.NoError(t, lease.Unlock(ctx))
		time.Sleep(700 * time.Microsecond)
	}
}
