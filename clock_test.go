package lmx

import (
	"context"
	"net"
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
		ctx := context.Background()
		for range 5 {
			l, err := b.Lock(ctx, "k")
			require.NoError(t, err)
			assert.WithinDuration(t, time.Now(), ulid.Time(l.ID().Time()), time.Millisecond)
			require.NoError(t, l.Unlock(ctx))
			time.Sleep(700 * time.Microsecond)
		}
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
		ctx := context.Background()
		c, err := Dial(ctx, "pipe:0", WithDialer(func(context.Context, string, string) (net.Conn, error) {
			c1, c2 := net.Pipe()
			b.ServeConn(c2)
			return c1, nil
		}))
		require.NoError(t, err)
		defer c.Close()
		for range 5 {
			l, err := c.Lock(ctx, "k")
			require.NoError(t, err)
			assert.WithinDuration(t, time.Now(), ulid.Time(l.ID().Time()), time.Millisecond)
			require.NoError(t, l.Unlock(ctx))
			time.Sleep(700 * time.Microsecond)
		}
		b.clock.mu.Lock()
		defer b.clock.mu.Unlock()
		assert.Nil(t, b.clock.timer, "session grants started the clock")
	})
}
