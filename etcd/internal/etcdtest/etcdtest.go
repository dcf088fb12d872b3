// Package etcdtest starts embedded etcd members for the etcd module's tests.
package etcdtest

import (
	"fmt"
	"net/url"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Member is the quiet configuration of a one-member cluster: the member
// name, its data in dir, serving clients on client and peers on peer.
func Member(name, dir string, client, peer url.URL) *embed.Config {
	cfg := embed.NewConfig()
	cfg.Name = name
	cfg.Dir = dir
	cfg.Logger = "zap"
	cfg.LogLevel = "error"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
	cfg.InitialCluster = name + "=" + peer.String()
	return cfg
}

// Start starts the member cfg configures and waits, 30 s at most, until it
// serves.
func Start(cfg *embed.Config) (*embed.Etcd, error) {
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
	return srv, nil
}
