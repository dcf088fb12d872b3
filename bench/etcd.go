package main

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"time"

	lmxetcd "github.com/lmx-go/lmx/etcd"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.etcd.io/etcd/server/v3/embed"
)

// etcdMaxCycles caps a run against etcd: with waiters on one key it does
// a few hundred cycles/s.
const etcdMaxCycles = 2000

// etcdServer is the one etcd server of a run, embedded in this process on
// 127.0.0.1 (one member, fsync on), started by the first etcd service that
// runs and shared by all of them, each round under a prefix of its own:
// the etcd services' rows compare the lock clients, on the same server.
type etcdServer struct {
	mu   sync.Mutex
	e    *embed.Etcd
	ep   string // client URL
	dir  string
	err  error // why it did not start
	pfxs atomic.Int64
}

// endpoint starts the server unless it runs, and returns its client URL
// and a prefix that no other service run has used.
func (s *etcdServer) endpoint(ctx context.Context) (ep, prefix string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.e == nil && s.err == nil {
		s.e, s.ep, s.dir, s.err = startEmbeddedEtcd(ctx)
	}
	if s.err != nil {
		return "", "", s.err
	}
	return s.ep, fmt.Sprintf("/lmxbench/%d/", s.pfxs.Add(1)), nil
}

// close stops the server, if it started.
func (s *etcdServer) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.e != nil {
		s.e.Close()
		os.RemoveAll(s.dir)
		s.e = nil
	}
}

func startEmbeddedEtcd(ctx context.Context) (_ *embed.Etcd, ep, dir string, err error) {
	dir, err = os.MkdirTemp("", "lmxbench-etcd")
	if err != nil {
		return nil, "", "", err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
		}
	}()
	cport, err := freePort()
	if err != nil {
		return nil, "", "", err
	}
	pport, err := freePort()
	if err != nil {
		return nil, "", "", err
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
		return nil, "", "", err
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(20 * time.Second):
		err = errors.New("etcd not ready after 20s")
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		e.Close()
		return nil, "", "", err
	}
	return e, curl.String(), dir, nil
}

// newEtcdClient is a client of its own, as a process of its own would have.
func newEtcdClient(ep string) (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{Endpoints: []string{ep}, DialTimeout: 5 * time.Second})
}

// etcdMutex locks through concurrency.Mutex, each worker with a client and
// a session of its own, as separate processes would have.
type etcdMutex struct{ ep, pfx string }

func startEtcdMutex(ctx context.Context, cfg config) (running, error) {
	ep, pfx, err := cfg.etcd.endpoint(ctx)
	if err != nil {
		return nil, err
	}
	return etcdMutex{ep, pfx}, nil
}

func (s etcdMutex) newWorker(ctx context.Context, _ int) (worker, error) {
	cli, err := newEtcdClient(s.ep)
	if err != nil {
		return nil, err
	}
	sess, err := concurrency.NewSession(cli, concurrency.WithTTL(30), concurrency.WithContext(context.WithoutCancel(ctx)))
	if err != nil {
		cli.Close()
		return nil, err
	}
	return &etcdWorker{cli: cli, sess: sess, pfx: s.pfx, ms: make(map[string]*concurrency.Mutex)}, nil
}

func (etcdMutex) rss() string { return "" }
func (etcdMutex) close()      {}

type etcdWorker struct {
	cli  *clientv3.Client
	sess *concurrency.Session
	pfx  string
	ms   map[string]*concurrency.Mutex
}

func (w *etcdWorker) cycle(ctx context.Context, key string) (time.Duration, error) {
	m := w.ms[key]
	if m == nil {
		m = concurrency.NewMutex(w.sess, w.pfx+key)
		w.ms[key] = m
	}
	t := time.Now()
	if err := m.Lock(ctx); err != nil {
		return 0, err
	}
	d := time.Since(t)
	return d, m.Unlock(ctx)
}

func (w *etcdWorker) close() {
	w.sess.Close()
	w.cli.Close()
}

// lmxEtcd locks through the lmx etcd door: with perWorker, each worker has
// a client and a Locker of its own, as separate processes would have;
// otherwise one Locker serves every worker, as the goroutines of one
// process would share it.
type lmxEtcd struct {
	ep, pfx string
	shared  *lmxetcd.Locker // nil with a Locker per worker
	cli     *clientv3.Client
}

func startLMXEtcd(ctx context.Context, cfg config, perWorker bool) (running, error) {
	ep, pfx, err := cfg.etcd.endpoint(ctx)
	if err != nil {
		return nil, err
	}
	s := &lmxEtcd{ep: ep, pfx: pfx}
	if perWorker {
		return s, nil
	}
	if s.cli, err = newEtcdClient(ep); err != nil {
		return nil, err
	}
	if s.shared, err = lmxetcd.New(ctx, s.cli, pfx); err != nil {
		s.cli.Close()
		return nil, err
	}
	return s, nil
}

func (s *lmxEtcd) newWorker(ctx context.Context, _ int) (worker, error) {
	if s.shared != nil {
		return &lmxWorker{l: s.shared}, nil
	}
	cli, err := newEtcdClient(s.ep)
	if err != nil {
		return nil, err
	}
	lk, err := lmxetcd.New(ctx, cli, s.pfx)
	if err != nil {
		cli.Close()
		return nil, err
	}
	return &etcdLockerWorker{lmxWorker{l: lk}, cli}, nil
}

func (s *lmxEtcd) rss() string { return "" }

func (s *lmxEtcd) close() {
	if s.shared != nil {
		s.shared.Close()
		s.cli.Close()
	}
}

// etcdLockerWorker is a worker with an etcd Locker and client of its own.
type etcdLockerWorker struct {
	lmxWorker
	cli *clientv3.Client
}

func (w *etcdLockerWorker) close() {
	w.l.Close()
	w.cli.Close()
}
