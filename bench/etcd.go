package main

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.etcd.io/etcd/server/v3/embed"
)

// etcdMaxCycles caps a run against etcd: with waiters on one key it does
// about 200 cycles/s.
const etcdMaxCycles = 2000

// etcdService is an etcd server embedded in this process on 127.0.0.1,
// locked through concurrency.Mutex with one session per worker.
type etcdService struct {
	e   *embed.Etcd
	cli *clientv3.Client
	dir string
}

func startEtcd(ctx context.Context, _ config) (_ running, err error) {
	dir, err := os.MkdirTemp("", "lmxbench-etcd")
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
		}
	}()
	cport, err := freePort()
	if err != nil {
		return nil, err
	}
	pport, err := freePort()
	if err != nil {
		return nil, err
	}
	curl, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", cport))
	purl, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", pport))
	cfg := embed.NewConfig()
	cfg.Dir = dir
	cfg.LogLevel = "fatal" // its errors at Close are noise here
	cfg.ListenClientUrls = []url.URL{*curl}
	cfg.AdvertiseClientUrls = []url.URL{*curl}
	cfg.ListenPeerUrls = []url.URL{*purl}
	cfg.AdvertisePeerUrls = []url.URL{*purl}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			e.Close()
		}
	}()
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(20 * time.Second):
		return nil, errors.New("etcd not ready after 20s")
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{curl.String()}, DialTimeout: 5 * time.Second})
	if err != nil {
		return nil, err
	}
	return &etcdService{e: e, cli: cli, dir: dir}, nil
}

func (s *etcdService) newWorker(ctx context.Context, _ int) (worker, error) {
	sess, err := concurrency.NewSession(s.cli, concurrency.WithTTL(30), concurrency.WithContext(context.WithoutCancel(ctx)))
	if err != nil {
		return nil, err
	}
	return &etcdWorker{sess: sess, ms: make(map[string]*concurrency.Mutex)}, nil
}

func (s *etcdService) rss() string { return "" }

func (s *etcdService) close() {
	s.cli.Close()
	s.e.Close()
	os.RemoveAll(s.dir)
}

type etcdWorker struct {
	sess *concurrency.Session
	ms   map[string]*concurrency.Mutex
}

func (w *etcdWorker) cycle(ctx context.Context, key string) (time.Duration, error) {
	m := w.ms[key]
	if m == nil {
		m = concurrency.NewMutex(w.sess, "/lmxbench/"+key)
		w.ms[key] = m
	}
	t := time.Now()
	if err := m.Lock(ctx); err != nil {
		return 0, err
	}
	d := time.Since(t)
	return d, m.Unlock(ctx)
}

func (w *etcdWorker) close() { w.sess.Close() }
