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
	"github.com/lmx-go/lmx/locktest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
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

// startEtcd starts a one-member etcd on free loopback ports.
func startEtcd(dir string) (*embed.Etcd, error) {
	cfg := embed.NewConfig()
	cfg.Dir = dir
	cfg.Logger = "zap"
	cfg.LogLevel = "error"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cu, pu := freeURL(), freeURL()
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
	cfg.InitialCluster = cfg.Name + "=" + pu.String()
	cfg.UnsafeNoFsync = true // a test's data dir needs no durability
	srv, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, err
	}
	select {
	case <-srv.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		srv.Close()
		return nil, fmt.Errorf("etcd did not start")
	}
	endpoint = cu.Host
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
		locktest.Skip("the etcd backend refuses Owner (re-entrancy)", "Reentrant", "Inspect"),
		locktest.Skip("the etcd backend refuses Priority and Preempt", "Priority", "PriorityStarvationBound",
			"PreemptReleasedInGrace", "PreemptForced", "PreemptRefused"),
		locktest.Skip("the etcd backend refuses a positive LockDelay", "LockDelay"),
		locktest.Skip("the etcd backend's Stats keeps no histograms", "StatsHistograms"))
}

func TestUnsupportedOptions(t *testing.T) {
	l := newLocker(t)
	for _, o := range []lmx.LockOption{lmx.Priority(1), lmx.Owner("o"), lmx.Preempt(0),
		lmx.LockDelay(time.Second)} {
		_, err := l.Lock(t.Context(), "k", o)
		assert.ErrorIs(t, err, etcd.ErrUnsupported)
		assert.ErrorIs(t, err, lmx.ErrInvalidOption)
	}
	_, err := l.Lock(t.Context(), "k", lmx.TTL(time.Second), lmx.KeepOnDisconnect())
	assert.ErrorIs(t, err, etcd.ErrUnsupported)
	_, err = l.Lock(t.Context(), "k", lmx.Shared(), lmx.Limit(2))
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
func TestSessionLost(t *testing.T) {
	ctx := t.Context()
	pfx := fmt.Sprintf("etcd://%s/lost/%d?session_ttl=2s", endpoint, prefixes.Add(1))
	open := func() *etcd.Locker {
		l, err := lmx.Open(ctx, pfx)
		require.NoError(t, err)
		t.Cleanup(func() { l.Close() })
		return l.(*etcd.Locker)
	}
	a, b := open(), open()
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

	// The Locker whose session was lost starts a new one.
	again, err := a.Lock(ctx, "k")
	require.NoError(t, err)
	require.NoError(t, again.Unlock(ctx))
}
