package lmx_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/oklog/ulid/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeBackend records the calls a lease made by NewLease sends it.
type fakeBackend struct {
	mu        sync.Mutex
	unlocks   int
	extends   []time.Duration
	unlockErr error
	extendErr error
	exp       time.Time
}

func (f *fakeBackend) Unlock(ctx context.Context, l *lmx.Lease) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.unlocks++
	if f.unlockErr != nil {
		return f.unlockErr
	}
	return ctx.Err()
}

func (f *fakeBackend) Extend(ctx context.Context, l *lmx.Lease, ttl time.Duration) (time.Time, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.extends = append(f.extends, ttl)
	return f.exp, f.extendErr
}

func TestNewLease(t *testing.T) {
	ctx := context.Background()
	id := ulid.Make()
	exp := time.Now().Add(time.Minute)
	fb := &fakeBackend{}
	l, end := lmx.NewLease("k", id, 42, exp, fb)
	assert.Equal(t, "k", l.Key())
	assert.Equal(t, id, l.ID())
	assert.Equal(t, uint64(42), l.Token())
	assert.True(t, l.Expires().Equal(exp))
	assert.NoError(t, l.Err())
	select {
	case <-l.Done():
		t.Fatal("a new lease is done")
	default:
	}

	fb.exp = exp.Add(time.Hour)
	require.NoError(t, l.Extend(ctx, time.Second))
	assert.Equal(t, []time.Duration{time.Second}, fb.extends)
	assert.True(t, l.Expires().Equal(fb.exp), "Extend did not move Expires")
	require.ErrorIs(t, l.Extend(ctx, 0), lmx.ErrInvalidOption)
	assert.Len(t, fb.extends, 1, "an invalid Extend reached the backend")

	fb.extendErr = errors.New("boom")
	require.ErrorIs(t, l.Extend(ctx, time.Second), fb.extendErr)
	assert.True(t, l.Expires().Equal(fb.exp), "a failed Extend moved Expires")

	fb.unlockErr = errors.New("unreachable")
	require.ErrorIs(t, l.Unlock(ctx), fb.unlockErr)
	assert.NoError(t, l.Err(), "a failed Unlock ended the lease")
	fb.unlockErr = nil

	require.NoError(t, l.Unlock(ctx))
	<-l.Done()
	assert.ErrorIs(t, l.Err(), lmx.ErrReleased)
	assert.False(t, end(lmx.ErrSessionLost), "end counted after the lease ended")
	assert.ErrorIs(t, l.Err(), lmx.ErrReleased)
	err := l.Unlock(ctx)
	assert.ErrorIs(t, err, lmx.ErrNotHeld)
	assert.ErrorIs(t, err, lmx.ErrReleased)
	assert.ErrorIs(t, l.Extend(ctx, time.Second), lmx.ErrNotHeld)
	assert.Equal(t, 2, fb.unlocks, "calls on an ended lease reached the backend")
}

func TestNewLeaseLost(t *testing.T) {
	fb := &fakeBackend{}
	l, end := lmx.NewLease("k", ulid.Make(), 1, time.Time{}, fb)
	assert.True(t, l.Expires().IsZero())
	done := l.Done()
	var wg sync.WaitGroup
	firsts := make(chan bool, 8)
	for range 8 {
		wg.Go(func() { firsts <- end(lmx.ErrSessionLost) })
	}
	wg.Wait()
	close(firsts)
	n := 0
	for f := range firsts {
		if f {
			n++
		}
	}
	assert.Equal(t, 1, n, "end must count exactly once")
	<-done
	err := l.Err()
	assert.ErrorIs(t, err, lmx.ErrLeaseLost)
	assert.ErrorIs(t, err, lmx.ErrSessionLost)
	err = l.Unlock(context.Background())
	assert.ErrorIs(t, err, lmx.ErrNotHeld)
	assert.ErrorIs(t, err, lmx.ErrSessionLost)
	assert.Zero(t, fb.unlocks)

	// A cancelled Unlock still releases.
	l2, _ := lmx.NewLease("k", ulid.Make(), 2, time.Time{}, fb)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	assert.ErrorIs(t, l2.Unlock(ctx), context.Canceled)
	<-l2.Done()
	assert.ErrorIs(t, l2.Err(), lmx.ErrReleased)

	// A reason already matching ErrLeaseLost is kept.
	l3, end3 := lmx.NewLease("k", ulid.Make(), 3, time.Time{}, fb)
	reason := errors.Join(lmx.ErrLeaseLost, lmx.ErrExpired)
	assert.True(t, end3(reason))
	assert.Equal(t, reason, l3.Err())
}

func TestParseLockOptions(t *testing.T) {
	r, err := lmx.ParseLockOptions()
	require.NoError(t, err)
	assert.Equal(t, lmx.LockRequest{Limit: 1, Preempt: -1, LockDelay: -1}, r)

	r, err = lmx.ParseLockOptions(lmx.TTL(time.Second), lmx.KeepAlive(time.Minute), lmx.Limit(3),
		lmx.Priority(-2), lmx.Owner("o"), lmx.Shared(), lmx.KeepOnDisconnect(),
		lmx.Preempt(time.Millisecond), lmx.NoPreempt(), lmx.LockDelay(0))
	require.NoError(t, err)
	assert.Equal(t, lmx.LockRequest{
		TTL: time.Second, KeepAlive: time.Minute, Limit: 3, Priority: -2, Owner: "o", Shared: true,
		KeepOnDisconnect: true, Preempt: time.Millisecond, NoPreempt: true, LockDelay: 0,
	}, r)

	_, err = lmx.ParseLockOptions(lmx.KeepAlive(time.Second))
	assert.ErrorIs(t, err, lmx.ErrInvalidOption)
	_, err = lmx.ParseLockOptions(lmx.Limit(0))
	assert.ErrorIs(t, err, lmx.ErrInvalidOption)
}

// onlyLocker hides every method of a Locker but Locker's own, as a
// backend's Locker would offer them.
type onlyLocker struct{ lmx.Locker }

func TestLockAllOnAnyLocker(t *testing.T) {
	ctx := context.Background()
	b := lmx.NewBroker()
	defer b.Close()
	d := onlyLocker{b}

	l, err := lmx.LockAll(ctx, d, []string{"b", "a", "b"})
	require.NoError(t, err)
	parts := l.Parts()
	require.Len(t, parts, 2)
	assert.Equal(t, "a", parts[0].Key())
	assert.Equal(t, "b", parts[1].Key())
	assert.Less(t, parts[0].Token(), parts[1].Token(), "keys are taken in canonical order")

	_, err = lmx.TryLockAll(ctx, d, []string{"c", "b"})
	require.ErrorIs(t, err, lmx.ErrLocked)
	c, err := b.TryLock(ctx, "c")
	require.NoError(t, err, "a TryLockAll that failed keeps none of its keys")
	require.NoError(t, c.Unlock(ctx))

	require.NoError(t, l.Unlock(ctx))
	for _, p := range parts {
		assert.ErrorIs(t, p.Err(), lmx.ErrReleased)
	}
	l, err = lmx.TryLockAll(ctx, d, []string{"a", "b", "c"})
	require.NoError(t, err, "Unlock released every key")
	require.NoError(t, l.Unlock(ctx))
}

func TestKeepAliveOfBackendLease(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		fb := &fakeBackend{}
		ttl := 30 * time.Millisecond
		l, _ := lmx.NewLease("k", ulid.Make(), 1, time.Now().Add(ttl), fb)
		lmx.KeepAliveLease(l, ttl, 100*time.Millisecond)

		time.Sleep(95 * time.Millisecond)
		synctest.Wait()
		fb.mu.Lock()
		// At 10, 20, ..., 70ms by the TTL; at 80ms by the 20ms left of the
		// bound, which the lease then reaches without another renewal.
		assert.Equal(t, []time.Duration{ttl, ttl, ttl, ttl, ttl, ttl, ttl, 20 * time.Millisecond}, fb.extends)
		n := len(fb.extends)
		fb.mu.Unlock()

		time.Sleep(time.Second)
		synctest.Wait()
		fb.mu.Lock()
		assert.Len(t, fb.extends, n, "no renewal past the bound")
		fb.mu.Unlock()
		require.NoError(t, l.Unlock(ctx))
	})
}

func TestKeepAliveStopsWhenLeaseEnds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fb := &fakeBackend{extendErr: errors.New("backend down")}
		ttl := 30 * time.Millisecond
		l, end := lmx.NewLease("k", ulid.Make(), 1, time.Now().Add(ttl), fb)
		lmx.KeepAliveLease(l, ttl, time.Hour)

		time.Sleep(16 * time.Millisecond)
		synctest.Wait()
		fb.mu.Lock()
		assert.Len(t, fb.extends, 2, "a failed renewal is retried after a sixth of the TTL")
		fb.mu.Unlock()

		end(lmx.ErrExpired)
		time.Sleep(time.Second)
		synctest.Wait()
		fb.mu.Lock()
		assert.Len(t, fb.extends, 2, "no renewal once the lease ended")
		fb.mu.Unlock()
	})
}

func TestRevokeLease(t *testing.T) {
	l, end := lmx.NewLease("k", ulid.Make(), 1, time.Time{}, &fakeBackend{})
	revoked := l.Revoked()
	select {
	case <-revoked:
		t.Fatal("a new lease is revoked")
	default:
	}
	lmx.RevokeLease(l)
	lmx.RevokeLease(l) // once is enough; twice is no panic
	select {
	case <-revoked:
	default:
		t.Fatal("RevokeLease did not close Revoked")
	}
	assert.NoError(t, l.Err(), "a revoke asks; it does not end the lease")
	end(lmx.ErrPreempted)
	assert.ErrorIs(t, l.Err(), lmx.ErrPreempted)
	assert.ErrorIs(t, l.Err(), lmx.ErrLeaseLost)
}
