// Package chaostest runs lmx's chaos harness (internal/chaos) against the
// etcd backend: an embedded etcd in a process of its own, killed with
// SIGKILL and restarted on its data as the harness's broker fault.
package chaostest

import (
	"flag"
	"fmt"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/lmx-go/lmx/etcd/internal/etcdtest"
	"github.com/lmx-go/lmx/internal/chaos"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/server/v3/embed"

	_ "github.com/lmx-go/lmx/etcd" // etcd:// for lmx.Open
)

var (
	duration = flag.Duration("chaos.duration", 20*time.Second, "how long TestChaosEtcd injects faults")
	seed     = flag.Uint64("chaos.seed", 1, "TestChaosEtcd's seed; 0 picks one at random")
)

// sessionTTL is the etcd sessions' TTL: etcd counts lease TTLs in whole
// seconds.
const sessionTTL = 2 * time.Second

func TestMain(m *testing.M) {
	if ran, code := chaos.Main(map[string]chaos.ServerRole{"etcd": startEtcd}); ran {
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// startEtcd starts a one-member etcd serving clients on addr, its data in
// dir, where a restart finds it.
func startEtcd(dir, addr, peer string) (func(), error) {
	cu, pu := url.URL{Scheme: "http", Host: addr}, url.URL{Scheme: "http", Host: peer}
	srv, err := etcdtest.Start(etcdtest.Member(embed.NewConfig().Name, dir, cu, pu))
	if err != nil {
		return nil, err
	}
	return srv.Close, nil
}

// No double grant, no overlap on clean keys, tokens in order and keys free
// after the faults, through the etcd backend, while workers are killed,
// their connections to etcd cut and stalled past the session TTL, leases
// expire and are forced, and etcd itself is killed and restarted.
func TestChaosEtcd(t *testing.T) {
	s := *seed
	if s == 0 {
		s = uint64(time.Now().UnixNano())
	}
	exe, err := os.Executable()
	require.NoError(t, err)
	dir, err := os.MkdirTemp("", "chaos")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	srv := &chaos.Server{
		Role:           "etcd",
		URL:            func(addr string) string { return fmt.Sprintf("etcd://%s/chaos/?session_ttl=%v", addr, sessionTTL) },
		SessionTimeout: sessionTTL,
	}
	sum, err := chaos.Run(t.Context(), chaos.Config{Duration: *duration, Seed: s, Dir: dir, Exe: exe, Log: testLog{t}, Server: srv})
	require.NoError(t, err)
	t.Log(sum)
	assert.False(t, sum.Failed(), "violations (replay with -chaos.seed=%d):\n%v", s, sum)
	assert.Positive(t, sum.Cycles)
}

type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(string(p))
	return len(p), nil
}
