package lmx

import (
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// A lease's signals change by compare-and-swap: Done, Revoked, a revoke and
// the end racing one another lose nothing and close each channel once.
func TestLeaseSignalsRace(t *testing.T) {
	for range 200 {
		l := new(Lease)
		var done, revoked <-chan struct{}
		var wg sync.WaitGroup
		wg.Go(func() { done = l.Done() })
		wg.Go(func() { revoked = l.Revoked() })
		wg.Go(l.revokeNow)
		wg.Go(l.revokeNow)
		wg.Go(func() { l.end(ErrReleased) })
		wg.Go(func() { _ = l.Err() })
		wg.Wait()
		<-done
		<-revoked
		<-l.Done()
		<-l.Revoked()
		require.Equal(t, ErrReleased, l.Err())
	}
}

// A lease nobody watched ends with a shared end, and asking Done or
// Revoked of it afterwards does not write that end.
func TestSharedEndIsNotWritten(t *testing.T) {
	l := new(Lease)
	l.end(ErrReleased)
	shared := l.sig.Load()
	require.Contains(t, sharedEnds, shared)
	<-l.Done()
	r := l.Revoked()
	require.NotSame(t, shared, l.sig.Load())
	require.Nil(t, shared.revoke, "Revoked wrote the shared end")
	l.revokeNow()
	<-r
	require.Equal(t, ErrReleased, l.Err())
}
