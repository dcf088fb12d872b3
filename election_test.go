package lmx_test

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestElection(t *testing.T) {
	doors := map[string]func(t testing.TB) lmx.ElectionDoor{
		"Broker": func(t testing.TB) lmx.ElectionDoor {
			b := lmx.NewBroker()
			t.Cleanup(func() { b.Close() })
			return b
		},
		"Client": func(t testing.TB) lmx.ElectionDoor {
			c, _ := pipeClient(t)
			return c
		},
	}
	for name, newDoor := range doors {
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				door := newDoor(t)
				a, b := lmx.NewElection(door, "db"), lmx.NewElection(door, "db")

				_, err := a.Leader(ctx)
				require.ErrorIs(t, err, lmx.ErrNoLeader)
				leaders, err := a.Observe(ctx)
				require.NoError(t, err)

				la, err := a.Campaign(ctx, "host-a", lmx.TTL(10*time.Second))
				require.NoError(t, err)
				assert.Equal(t, "host-a", <-leaders)
				leader, err := b.Leader(ctx)
				require.NoError(t, err)
				assert.Equal(t, "host-a", leader)

				won := make(chan *lmx.Lease, 1)
				go func() {
					lb, err := b.Campaign(ctx, "host-b")
					if err == nil {
						won <- lb
					}
				}()
				synctest.Wait()
				require.Empty(t, won, "two leaders at once")

				require.NoError(t, a.Resign(ctx, la))
				lb := <-won
				assert.Equal(t, "host-b", <-leaders)
				assert.Greater(t, lb.Token(), la.Token(), "a new leader has a newer token")

				// A leader whose lease expires loses leadership.
				require.NoError(t, b.Resign(ctx, lb))
				assert.Empty(t, leaders)
				la, err = a.Campaign(ctx, "host-a", lmx.TTL(time.Second))
				require.NoError(t, err)
				assert.Equal(t, "host-a", <-leaders)
				<-la.Done()
				assert.ErrorIs(t, la.Err(), lmx.ErrExpired)
				_, err = a.Leader(ctx)
				assert.ErrorIs(t, err, lmx.ErrNoLeader)

				cancel()
				for range leaders { // Observe ends with ctx
				}
			})
		})
	}
}
