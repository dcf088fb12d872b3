package etcd_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/lmx-go/lmx/etcd"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// An Unlock that meets the lease's expiry on its way reports the expiry,
// and by the time it returns, Err and Done say so too.
func TestUnlockMeetsExpiry(t *testing.T) {
	lk := newLocker(t)
	expiring := make(chan struct{})
	proceed := make(chan struct{})
	etcd.SetExpiring(func() {
		close(expiring)
		<-proceed
	})
	t.Cleanup(func() { etcd.SetExpiring(nil) })

	l, err := lk.Lock(t.Context(), "exp", lmx.TTL(50*time.Millisecond))
	require.NoError(t, err)
	<-expiring // the expiry has taken the lease, and not deleted its key yet
	unlocked := make(chan error, 1)
	go func() {
		err := l.Unlock(context.Background())
		// What the caller sees as Unlock returns.
		select {
		case <-l.Done():
		default:
			err = fmt.Errorf("Done still open as Unlock returned %w", err)
		}
		if l.Err() == nil {
			err = fmt.Errorf("Err still nil as Unlock returned %w", err)
		}
		unlocked <- err
	}()
	select {
	case err := <-unlocked:
		t.Fatalf("Unlock returned before the expiry ended the lease: %v", err)
	case <-time.After(100 * time.Millisecond): // the time for Unlock to meet the expiry
	}
	close(proceed)
	err = <-unlocked
	require.ErrorIs(t, err, lmx.ErrNotHeld)
	require.ErrorIs(t, err, lmx.ErrExpired)
	require.ErrorIs(t, l.Err(), lmx.ErrExpired)
	require.ErrorIs(t, l.Err(), lmx.ErrLeaseLost)
	assertFree(t, lk, "exp")
}

func assertFree(t *testing.T, lk *etcd.Locker, key string) {
	t.Helper()
	l, err := lk.TryLock(t.Context(), key)
	require.NoError(t, err, "key %q should be free", key)
	require.NoError(t, l.Unlock(t.Context()))
}

// ForceUnlock from another Locker and Unlock of the holder, in either
// order and racing, end the lease with ErrForced or ErrReleased, never
// ErrSessionLost, and the holder's Unlock says which.
func TestForceUnlockRacesUnlock(t *testing.T) {
	ctx := t.Context()
	url := fmt.Sprintf("etcd://%s/force/%d?session_ttl=5s", endpoint, prefixes.Add(1))
	holder, admin := openLocker(t, url), openLocker(t, url)

	// ForceUnlock first: the holder's Unlock, before or after its inbox
	// told it, learns that it was forced.
	l, err := holder.Lock(ctx, "k")
	require.NoError(t, err)
	require.NoError(t, admin.ForceUnlock(ctx, "k"))
	err = l.Unlock(ctx)
	require.ErrorIs(t, err, lmx.ErrNotHeld)
	require.ErrorIs(t, err, lmx.ErrForced)
	require.ErrorIs(t, l.Err(), lmx.ErrForced)

	// Unlock first: nothing is left to force.
	l, err = holder.Lock(ctx, "k")
	require.NoError(t, err)
	require.NoError(t, l.Unlock(ctx))
	require.ErrorIs(t, admin.ForceUnlock(ctx, "k"), lmx.ErrNotHeld)
	require.ErrorIs(t, l.Err(), lmx.ErrReleased)

	// Racing: one of them wins, and the lease says which.
	for i := range 30 {
		l, err := holder.Lock(ctx, "k")
		require.NoError(t, err)
		var wg sync.WaitGroup
		var unlockErr, forceErr error
		wg.Go(func() { unlockErr = l.Unlock(ctx) })
		wg.Go(func() { forceErr = admin.ForceUnlock(ctx, "k") })
		wg.Wait()
		<-l.Done()
		switch {
		case unlockErr == nil:
			require.ErrorIs(t, l.Err(), lmx.ErrReleased, "try %d", i)
			require.ErrorIs(t, forceErr, lmx.ErrNotHeld, "try %d", i)
		default:
			require.NoError(t, forceErr, "try %d", i)
			require.ErrorIs(t, unlockErr, lmx.ErrForced, "try %d", i)
			require.ErrorIs(t, l.Err(), lmx.ErrForced, "try %d", i)
		}
		require.NotErrorIs(t, l.Err(), lmx.ErrSessionLost, "try %d", i)
	}
	assertFree(t, holder, "k")
}

func openLocker(t *testing.T, url string) *etcd.Locker {
	t.Helper()
	l, err := lmx.Open(t.Context(), url)
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	return l.(*etcd.Locker)
}

// With its link to etcd cut, a Locker's Lock fails with an lmx error, and
// the request of a Lock given up meanwhile does not stay queued once etcd
// answers again, although the session lived on.
func TestLockWhileEtcdUnreachable(t *testing.T) {
	ctx := t.Context()
	link := newProxy(t, endpoint)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{link.addr}, DialTimeout: time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { cli.Close() })
	pfx := fmt.Sprintf("cut/%d", prefixes.Add(1))
	lk, err := etcd.New(ctx, cli, pfx, etcd.SessionTTL(6*time.Second))
	require.NoError(t, err)
	t.Cleanup(func() { lk.Close() })
	other := openLocker(t, fmt.Sprintf("etcd://%s/%s?session_ttl=5s", endpoint, pfx))

	held, err := other.Lock(ctx, "k")
	require.NoError(t, err)
	wctx, give := context.WithCancel(ctx)
	waited := make(chan error, 1)
	go func() {
		_, err := lk.Lock(wctx, "k")
		waited <- err
	}()
	waitWaiters(t, other, "k", 1)
	session := lk.Session()

	link.cut()
	give()
	select {
	case err := <-waited:
		require.ErrorIs(t, err, context.Canceled)
	case <-time.After(10 * time.Second):
		t.Fatal("a Lock given up while etcd was unreachable did not return")
	}
	link.restore()
	// The given-up request leaves the queue although its session lives.
	waitWaiters(t, other, "k", 0)
	assert.Equal(t, session, lk.Session(), "the session was lost: the test proves nothing")
	require.NoError(t, held.Unlock(ctx))
	l, err := lk.Lock(ctx, "k")
	require.NoError(t, err)
	require.NoError(t, l.Unlock(ctx))

	// A Lock while etcd does not answer fails with an lmx error.
	link.cut()
	_, err = lk.Lock(ctx, "other")
	require.ErrorIs(t, err, lmx.ErrSessionLost)
	assert.True(t, isLMX(err), "not an lmx error: %v", err)
	link.restore()
	l, err = lk.Lock(ctx, "other")
	require.NoError(t, err, "the Locker works again once etcd answers")
	require.NoError(t, l.Unlock(ctx))
}

func isLMX(err error) bool {
	for _, e := range []error{lmx.ErrSessionLost, lmx.ErrClosed, lmx.ErrLeaseLost, lmx.ErrNotHeld,
		lmx.ErrLocked, context.Canceled, context.DeadlineExceeded} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// waitWaiters waits, at most 15s, until key has n waiters.
func waitWaiters(t *testing.T, lk *etcd.Locker, key string, n int) {
	t.Helper()
	var got int
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		ki, err := lk.Inspect(t.Context(), key)
		require.NoError(t, err)
		if got = len(ki.Waiters); got == n {
			return
		}
	}
	t.Fatalf("key %q has %d waiters, want %d", key, got, n)
}

// A ForceUnlock that takes a key as it is granted, and whose word comes
// before the grant's lease is made, fails the Lock with the reason rather
// than returning a lease whose key went: a mutex's grant finds the word its
// inbox heard, a semaphore's finds its key gone as it writes it to wake
// the request behind, KeepOnDisconnect's as it gives it an etcd lease.
func TestForcedAsGranted(t *testing.T) {
	lk := newLocker(t)
	heard := make(chan struct{}, 1)
	etcd.SetHearing(func() {
		select {
		case heard <- struct{}{}:
		default:
		}
	})
	t.Cleanup(func() { etcd.SetGranting(nil); etcd.SetHearing(nil) })
	for _, opts := range [][]lmx.LockOption{nil, {lmx.Limit(2)}, {lmx.KeepOnDisconnect(), lmx.TTL(5 * time.Second)}} {
		etcd.SetGranting(func() {
			require.NoError(t, lk.ForceUnlock(t.Context(), "k"))
			select {
			case <-heard:
			case <-time.After(10 * time.Second):
				t.Error("the inbox did not hear the ForceUnlock's word")
			}
		})
		l, err := lk.Lock(t.Context(), "k", opts...)
		etcd.SetGranting(nil)
		require.Nil(t, l, "options %d", len(opts))
		require.ErrorIs(t, err, lmx.ErrLeaseLost)
		require.ErrorIs(t, err, lmx.ErrForced)
		assertFree(t, lk, "k")
	}
}
