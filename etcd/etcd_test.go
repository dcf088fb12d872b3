package etcd_test

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/url"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/lmx-go/lmx/etcd"
	"github.com/lmx-go/lmx/etcd/internal/etcdtest"
	"github.com/lmx-go/lmx/locktest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
)

// endpoint is the client URL of the etcd server TestMain runs.
var endpoint string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "lmx-etcd")
	if err != nil {
		log.Fatal(err)
	}
	code := func() int {
		defer os.RemoveAll(dir)
		srv, err := startEtcd(dir)
		if err != nil {
			log.Print(err)
			return 1
		}
		defer srv.Close()
		return m.Run()
	}()
	os.Exit(code)
}

// memberConfig is the quiet configuration of an etcd member named name,
// with its data in dir, on free loopback ports.
func memberConfig(name, dir string) *embed.Config {
	cfg := etcdtest.Member(name, dir, freeURL(), freeURL())
	cfg.UnsafeNoFsync = true // a test's data dir needs no durability
	return cfg
}

// startEtcd starts a one-member etcd on free loopback ports.
func startEtcd(dir string) (*embed.Etcd, error) {
	cfg := memberConfig(embed.NewConfig().Name, dir)
	srv, err := etcdtest.Start(cfg)
	if err != nil {
		return nil, err
	}
	endpoint = cfg.ListenClientUrls[0].Host
	return srv, nil
}

func freeURL() url.URL {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer l.Close()
	return url.URL{Scheme: "http", Host: l.Addr().String()}
}

var prefixes atomic.Int64

// newLocker opens a Locker through lmx.Open under a prefix of its own.
func newLocker(t testing.TB) *etcd.Locker {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := lmx.Open(ctx, fmt.Sprintf("etcd://%s/test/%d?session_ttl=2s", endpoint, prefixes.Add(1)))
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	return l.(*etcd.Locker)
}

func TestConformance(t *testing.T) {
	locktest.Run(t, func(t testing.TB) lmx.Locker { return newLocker(t) },
		locktest.RealTime(50*time.Millisecond),
		locktest.Skip("a re-entry is an lmx.Lease of its own (same id and token), and the case unlocks its first lease twice: lmx.NewLease gives a backend no way to count grants of one *Lease", "Inspect"),
		locktest.Skip("the etcd backend's Stats keeps no histograms", "StatsHistograms"))
}

func TestUnsupportedOptions(t *testing.T) {
	l := newLocker(t)
	_, err := l.Lock(t.Context(), "k", lmx.Shared(), lmx.Limit(2))
	assert.ErrorIs(t, err, etcd.ErrUnsupported)
	_, err = l.Lock(t.Context(), "k\x00")
	assert.ErrorIs(t, err, lmx.ErrInvalidKey)
	// NoPreempt and LockDelay(0) ask for what the backend always does.
	lease, err := l.Lock(t.Context(), "k", lmx.NoPreempt(), lmx.LockDelay(0))
	require.NoError(t, err)
	require.NoError(t, lease.Unlock(t.Context()))
}

// Two Lockers (two sessions, as two processes would have) share the keys of
// one prefix; revoking the holder's session ends its lease with
// ErrSessionLost and the waiter of the other session gets the key.
// A link to etcd that stops carrying bytes holds up the Lock that starts
// the session, and only it: another Lock gives up at its ctx's end, Close
// returns at once, and the first Lock then fails with ErrClosed.
func TestCloseWhileSessionStarts(t *testing.T) {
	link := newProxy(t, endpoint)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{link.addr}, DialTimeout: 5 * time.Second})
	require.NoError(t, err)
	defer cli.Close()
	lk, err := etcd.New(t.Context(), cli, fmt.Sprintf("frozen/%d", prefixes.Add(1)))
	require.NoError(t, err)
	// New started a session: end it, so that the next Lock starts another.
	_, err = cli.Revoke(t.Context(), lk.Session())
	require.NoError(t, err)
	for deadline := time.Now().Add(10 * time.Second); lk.Session() != 0; time.Sleep(10 * time.Millisecond) {
		require.True(t, time.Now().Before(deadline), "the Locker did not see its session end")
	}

	link.freeze()
	locked := make(chan error, 1)
	go func() {
		_, err := lk.Lock(context.Background(), "k")
		locked <- err
	}()
	<-link.stalled // the session's Grant is on its way, and stuck

	// Another Lock waits for that session only as long as its ctx allows.
	short, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	waited := make(chan error, 1)
	go func() {
		_, err := lk.Lock(short, "other")
		waited <- err
	}()
	select {
	case err := <-waited:
		require.ErrorIs(t, err, context.DeadlineExceeded)
	case <-time.After(5 * time.Second):
		t.Fatal("a Lock outlived its ctx while another started the session")
	}

	closed := make(chan error, 1)
	go func() { closed <- lk.Close() }()
	select {
	case err := <-closed:
		require.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("Close waited for the session's start")
	}
	select {
	case err := <-locked:
		require.ErrorIs(t, err, lmx.ErrClosed)
	case <-time.After(5 * time.Second):
		t.Fatal("the Lock starting the session outlived Close")
	}
}

func TestSessionLost(t *testing.T) {
	ctx := t.Context()
	pfx := fmt.Sprintf("etcd://%s/lost/%d?session_ttl=2s", endpoint, prefixes.Add(1))
	open := func() *etcd.Locker {
		l, err := lmx.Open(ctx, pfx)
		require.NoError(t, err)
		t.Cleanup(func() { l.Close() })
		return l.(*etcd.Locker)
	}
	a, b, watcher := open(), open(), open()
	events, err := watcher.Watch(ctx, "k")
	require.NoError(t, err)
	held, err := a.Lock(ctx, "k")
	require.NoError(t, err)
	got := make(chan *lmx.Lease, 1)
	go func() {
		l, err := b.Lock(ctx, "k")
		assert.NoError(t, err)
		got <- l
	}()
	time.Sleep(100 * time.Millisecond)
	select {
	case <-got:
		t.Fatal("the waiter got a held key")
	default:
	}

	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second})
	require.NoError(t, err)
	defer cli.Close()
	_, err = cli.Revoke(ctx, a.Session())
	require.NoError(t, err)

	select {
	case <-held.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the holder did not learn that its session was lost")
	}
	assert.ErrorIs(t, held.Err(), lmx.ErrSessionLost)
	assert.ErrorIs(t, held.Err(), lmx.ErrLeaseLost)
	assert.ErrorIs(t, held.Unlock(ctx), lmx.ErrNotHeld)
	var next *lmx.Lease
	select {
	case next = <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("the waiter did not get the key")
	}
	require.NotNil(t, next)
	assert.Greater(t, next.Token(), held.Token())
	require.NoError(t, next.Unlock(ctx))

	// A watcher of another Locker saw the lease lost with its session.
	for _, want := range []struct {
		t lmx.EventType
		l *lmx.Lease
	}{{lmx.EventAcquired, held}, {lmx.EventSessionLost, held}, {lmx.EventAcquired, next}, {lmx.EventReleased, next}} {
		select {
		case ev := <-events:
			assert.Equal(t, want.t, ev.Type, "%+v", ev)
			assert.Equal(t, want.l.ID(), ev.ID)
			assert.Equal(t, want.l.Token(), ev.Token)
		case <-time.After(10 * time.Second):
			t.Fatalf("no %v event", want.t)
		}
	}

	// The Locker whose session was lost starts a new one.
	again, err := a.Lock(ctx, "k")
	require.NoError(t, err)
	require.NoError(t, again.Unlock(ctx))
}

// A lease asked with KeepOnDisconnect outlives the Locker that took it
// until its TTL, or until another Locker releases it by id.
func TestKeepOnDisconnect(t *testing.T) {
	ctx := t.Context()
	url := fmt.Sprintf("etcd://%s/keep/%d?session_ttl=2s", endpoint, prefixes.Add(1))
	other := openLocker(t, url)

	for _, release := range []bool{true, false} {
		a := openLocker(t, url)
		kept, err := a.Lock(ctx, "k", lmx.TTL(2*time.Second), lmx.KeepOnDisconnect())
		require.NoError(t, err)
		require.NoError(t, a.Close())
		require.ErrorIs(t, kept.Err(), lmx.ErrClosed, "the closed Locker's lease ends there")
		_, err = other.TryLock(ctx, "k")
		require.ErrorIs(t, err, lmx.ErrLocked, "the key outlives the Locker")
		ki, err := other.Inspect(ctx, "k")
		require.NoError(t, err)
		require.Len(t, ki.Holders, 1)
		assert.Equal(t, kept.ID(), ki.Holders[0].ID)
		if release {
			require.NoError(t, other.Release(ctx, "k", kept.ID()))
		}
		// Without Release, the key goes when etcd's lease of it runs out.
		next, err := other.Lock(ctx, "k")
		require.NoError(t, err)
		assert.Greater(t, next.Token(), kept.Token())
		require.NoError(t, next.Unlock(ctx))
	}
}
