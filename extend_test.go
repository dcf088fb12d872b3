package lmx_test

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/oklog/ulid/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestExtendByID: a lease is renewed by its id from another client and from
// the broker, as `lmx extend` does; a wrong id or TTL changes nothing.
func TestExtendByID(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		holder, b := pipeClient(t)
		other := pipeTo(t, b)
		defer other.Close()
		l, err := holder.Lock(ctx, "deploy", lmx.TTL(10*time.Second))
		require.NoError(t, err)

		exp, err := other.Extend(ctx, "deploy", l.ID(), time.Minute)
		require.NoError(t, err)
		assert.Equal(t, time.Now().Add(time.Minute), exp)
		time.Sleep(30 * time.Second)
		synctest.Wait()
		require.NoError(t, l.Err(), "the lease expired at its first TTL")

		exp, err = b.Extend(ctx, "deploy", l.ID(), time.Hour)
		require.NoError(t, err)
		assert.Equal(t, time.Now().Add(time.Hour), exp)

		_, err = other.Extend(ctx, "deploy", ulid.Make(), time.Hour)
		assert.ErrorIs(t, err, lmx.ErrNotHeld)
		_, err = other.Extend(ctx, "deploy", l.ID(), 0)
		assert.ErrorIs(t, err, lmx.ErrInvalidOption)
		_, err = b.Extend(ctx, "", l.ID(), time.Hour)
		assert.ErrorIs(t, err, lmx.ErrInvalidKey)

		time.Sleep(time.Hour + time.Second)
		<-l.Done()
		assert.ErrorIs(t, l.Err(), lmx.ErrExpired)
	})
}
