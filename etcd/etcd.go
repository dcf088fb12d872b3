// Package etcd is an lmx.Locker over etcd, for locks that must survive the
// machine of a single broker. Importing it registers the etcd:// scheme with
// lmx.Open:
//
//	etcd://10.0.0.5:2379,10.0.0.6:2379/locks/app
//
// Layout: the queue of key K is the etcd keys PREFIX K "\x00" SESSION "."
// SLOT, one per request (waiting or granted), each attached to the Locker's
// session (an etcd lease kept alive while the Locker lives); its value holds
// the request's lock id and options. The queue is ordered by create
// revision: a request is granted when the requests created before it allow
// it, and its fencing token is its create revision, so tokens of a key
// increase in grant order (until a request asks for a Priority: see below).
// A session reuses its slots, the lowest free one
// first, as concurrency.Mutex reuses its session's key: etcd keeps a deleted
// key in its index until it compacts, and a read of a queue walks every
// name the queue ever had, so names that grew with every request would make
// a busy key slower by the hour on an etcd that is not compacted. Every
// write to a request's key compares its create revision, or the revision
// of the last write its Locker made, so that an operation about a request
// that ended never touches the next one on the same name.
//
// An uncontended Lock and Unlock cost etcd what concurrency.Mutex's do: a
// Lock is one transaction that writes the request alone when it finds the
// queue empty, and otherwise writes it and reads the queue's first request
// and the one before it, and its grant record; an Unlock is one deletion
// that compares the key's last write.
//
// A Locker hears only about its own requests. A waiter watches the one
// request before it (a semaphore's first waiter, its holders), so a release
// is one etcd write and wakes one waiter, not a herd, and the cost of a
// hand-off does not grow with the number of Lockers (but on a key whose
// grant record rules, below). A holder watches
// nothing: its session's keepalive tells it when etcd drops its keys, and
// Release and ForceUnlock of another Locker write a word into the inbox
// of the holder's session (PREFIX "\x00i/" SESSION "/" ...) in the same
// transaction that deletes its key, which one watch per session hears. A
// key taken so while it is being granted fails its Lock with
// lmx.ErrLeaseLost and the reason, whether the word comes before the lease
// is made or the grant's own write finds the key gone.
//
// Supported options: TTL, KeepAlive, Limit (semaphores), Shared (without
// Limit), Priority, Preempt, NoPreempt, Owner, KeepOnDisconnect and
// LockDelay. Shared with Limit fails with an error matching ErrUnsupported
// and lmx.ErrInvalidOption.
//
// Priority and Preempt: a request with a Priority or a Preempt ask writes
// its key's grant record (PREFIX "\x00g/" KEY) as it arrives, naming the
// holders it found with their tokens; while the record rules the queue,
// only the requests it names hold, and a waiter that is the head of the
// queue (priority, then arrival, a waiter overtaken 64 times by later
// requests of higher priority granted before any later one) and fits
// claims its grant by writing the record in a transaction that compares
// the queue unchanged, with the write's revision as its token. Each waiter
// of such a key watches the whole queue and reads it on each change. Once
// every request created before the record's last write is gone, the queue
// is FIFO again, at its usual cost (grants.go says why this is safe). A
// waiter with a Preempt ask that is the head of its queue and does not fit
// writes an ask into the inbox of the holders in its way (their Revoked
// channels close), unless one of them is protected (NoPreempt, a priority
// not below its own, a lock-delay); after its grace, it ends those that
// still hold, as ForceUnlock does but with lmx.ErrPreempted and no
// lock-delay, and is granted with a newer token.
//
// Owner re-enters within one Locker: the re-entry is an lmx.Lease of its
// own with the same lock id and token, and the key is released when every
// grant is unlocked. An owner that holds a key through another Locker (a
// process of its own) re-enters too: its request reads the queue first,
// and finding the owner's grant, is written with its lock id and named in
// the key's grant record with its token, so that the key is held until
// the grants of both Lockers are undone. A request with an Owner costs a
// read of its queue more than one without.
//
// KeepOnDisconnect gives a granted key an etcd lease of its own, of the
// TTL rounded up to a second, so that the key outlives the Locker's
// session until about its TTL, or until Release by id; the Locker's own
// lmx.Lease ends with the session.
//
// LockDelay: when a lease expires or is forced, its key is not deleted but
// turned into a marker on an etcd lease of the delay, rounded up to a
// second (and at least etcd's shortest lease, about 2s with its default
// timing), which holds the key at the head of its queue until etcd drops
// it. A lease lost with its session is not delayed: its key goes with the
// session's etcd lease.
//
// TTL is enforced by the holder's Locker: when it runs out, the key is
// deleted and the lease ends (lmx.ErrExpired). A holder whose process dies
// or loses etcd frees its keys when the session's etcd lease expires
// (SessionTTL, default 5s); its leases end with lmx.ErrSessionLost as soon
// as the Locker's keepalive finds the session gone. A waiter is granted
// only by a read that finds its own request still queued, so one whose key
// went with its session while its link stalled is never granted: its Lock
// fails with lmx.ErrSessionLost. A key deleted in etcd by something other
// than lmx is noticed by its holder at its next Unlock (lmx.ErrNotHeld) or
// Extend. An Unlock that etcd does not answer ends the lease with
// lmx.ErrSessionLost, never nil: the key is deleted once etcd answers, or
// with the session.
//
// *Locker implements lmx.MultiLocker through lmx.LockAll: a LockAll is a
// Lock of each key in one canonical order, a lease (and token) per key.
//
// *Locker implements lmx.Admin, lmx.Lister and lmx.Watcher: Release and
// ForceUnlock work across processes (the holder learns the reason from its
// inbox); Inspect, Stats and List read the queues from etcd (Stats keeps
// no counters of what happened); Watch follows the prefix in etcd.
package etcd

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/lmx-go/lmx"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func init() { lmx.Register("etcd", openURL) }

var _ lmx.MultiLocker = (*Locker)(nil)

// ErrUnsupported: the etcd backend cannot honour a lock option. It is
// always wrapped together with lmx.ErrInvalidOption.
var ErrUnsupported = errors.New("lmx/etcd: option not supported by the etcd backend")

// DefaultSessionTTL is the TTL of a Locker's session unless SessionTTL says
// otherwise: how long etcd keeps the keys of a Locker it no longer hears.
const DefaultSessionTTL = 5 * time.Second

// An Option configures a Locker made by New.
type Option func(*config)

type config struct {
	sessionTTL time.Duration
}

// SessionTTL sets the TTL of the Locker's session, rounded up to a second
// (etcd's lease granularity); d <= 0 means DefaultSessionTTL.
func SessionTTL(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.sessionTTL = d
		}
	}
}

// A Locker is an lmx.Locker whose lock table is in etcd. Its methods are
// safe for concurrent use.
type Locker struct {
	cli    *clientv3.Client
	own    bool // Close closes cli
	pfx    string
	ttl    int64 // session TTL, seconds
	ctx    context.Context
	cancel context.CancelFunc

	mu       sync.Mutex
	sess     *session      // nil after one was lost, until a request starts the next
	starting chan struct{} // closed when the session being started is set or has failed
	closed   bool
	orphans  map[string]orphan // request keys to delete once etcd answers
	wg       sync.WaitGroup
}

// New returns a Locker whose keys live under prefix in the etcd cluster cli
// talks to, with its session started, so that its first Lock costs no more
// than the others. The caller keeps cli and closes it after the Locker.
func New(ctx context.Context, cli *clientv3.Client, prefix string, opts ...Option) (*Locker, error) {
	c := config{sessionTTL: DefaultSessionTTL}
	for _, o := range opts {
		o(&c)
	}
	if prefix != "" && !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	lctx, cancel := context.WithCancel(context.Background())
	lk := &Locker{cli: cli, pfx: prefix, ctx: lctx, cancel: cancel, ttl: seconds(c.sessionTTL)}
	if _, err := lk.session(ctx); err != nil {
		lk.Close()
		return nil, err
	}
	return lk, nil
}

// openURL is the lmx.Driver of etcd://host:port[,host:port]/prefix.
func openURL(ctx context.Context, u *url.URL) (lmx.Locker, error) {
	if u.Host == "" {
		return nil, fmt.Errorf("lmx/etcd: %q names no endpoint", u.Redacted())
	}
	var eps []string
	for _, h := range strings.Split(u.Host, ",") {
		eps = append(eps, "http://"+h)
	}
	cfg := clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second, Context: context.Background()}
	if u.User != nil {
		cfg.Username = u.User.Username()
		cfg.Password, _ = u.User.Password()
	}
	var opts []Option
	if s := u.Query().Get("session_ttl"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			return nil, fmt.Errorf("%w: lmx/etcd: session_ttl: %w", lmx.ErrInvalidOption, err)
		}
		opts = append(opts, SessionTTL(d))
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("lmx/etcd: %w", err)
	}
	lk, err := New(ctx, cli, strings.TrimPrefix(u.Path, "/"), opts...)
	if err != nil {
		cli.Close()
		return nil, err
	}
	lk.own = true
	return lk, nil
}

// Lock waits until key is granted.
func (lk *Locker) Lock(ctx context.Context, key string, opts ...lmx.LockOption) (*lmx.Lease, error) {
	return lk.lock(ctx, key, opts, false)
}

// TryLock grants key if the requests before it allow it now, and otherwise
// fails with lmx.ErrLocked.
func (lk *Locker) TryLock(ctx context.Context, key string, opts ...lmx.LockOption) (*lmx.Lease, error) {
	return lk.lock(ctx, key, opts, true)
}

// LockAll locks every key in keys and returns one lease for them all, or
// none: lmx.LockAll through this Locker, with the broker's semantics (one
// canonical order, a token per key in Parts).
func (lk *Locker) LockAll(ctx context.Context, keys []string, opts ...lmx.LockOption) (*lmx.Lease, error) {
	return lmx.LockAll(ctx, lk, keys, opts...)
}

// TryLockAll is LockAll that never waits: if a key cannot be granted at
// once, it releases those it took and fails with lmx.ErrLocked.
func (lk *Locker) TryLockAll(ctx context.Context, keys []string, opts ...lmx.LockOption) (*lmx.Lease, error) {
	return lmx.TryLockAll(ctx, lk, keys, opts...)
}

// Close ends the session: its leases end (lmx.ErrClosed), its waiters fail
// with lmx.ErrClosed, and etcd drops its keys. Close is idempotent.
func (lk *Locker) Close() error {
	lk.mu.Lock()
	if lk.closed {
		lk.mu.Unlock()
		return nil
	}
	lk.closed = true
	s := lk.sess
	lk.sess = nil
	lk.mu.Unlock()
	if s != nil {
		lk.endSession(s, lmx.ErrClosed)
		lk.revoke(s.id)
	}
	lk.cancel()
	lk.wg.Wait()
	if lk.own {
		return lk.cli.Close()
	}
	return nil
}

// Session returns the etcd lease id of the Locker's current session, or 0
// when it has none (one was lost, and no request has started the next):
// revoking it is how a test kills the session.
func (lk *Locker) Session() clientv3.LeaseID {
	lk.mu.Lock()
	defer lk.mu.Unlock()
	if lk.sess == nil {
		return 0
	}
	return lk.sess.id
}

// unsupported checks the options the backend cannot honour.
func unsupported(r lmx.LockRequest) error {
	if r.Shared && r.Limit > 1 {
		return fmt.Errorf("%w: %w: Shared with Limit", lmx.ErrInvalidOption, ErrUnsupported)
	}
	return nil
}
