// Package chaostest runs lmx's chaos harness (internal/chaos) against the
// etcd backend: an embedded etcd in a process of its own, killed with
// SIGKILL and restarted on its data as the harness's broker fault.
package chaostest

import (
	"fmt"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/lmx-go/lmx/etcd/internal/etcdtest"
	"github.com/lmx-go/lmx/internal/chaos"
	"go.etcd.io/etcd/server/v3/embed"

	_ "github.com/lmx-go/lmx/etcd" // etcd:// for lmx.Open
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
// expire and are forced, and etcd itself is killed and restarted. The
// -chaos.duration (20 s by default) and -chaos.seed flags work as for the
// broker's TestChaos.
func TestChaosEtcd(t *testing.T) {
	chaos.RunTest(t, &chaos.Server{
		Role:           "etcd",
		URL:            func(addr string) string { return fmt.Sprintf("etcd://%s/chaos/?session_ttl=%v", addr, sessionTTL) },
		SessionTimeout: sessionTTL,
	}, 20*time.Second)
}
