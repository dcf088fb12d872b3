package etcd

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lmx-go/lmx"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// What a Locker hears from etcd is only what concerns its own requests: a
// waiter watches the few keys its grant depends on (the request before it,
// or a semaphore's holders), and a session watches its inbox, where
// Release and ForceUnlock of another Locker say that they took one of its
// keys, and why. A hand-off is one deletion, seen by one watch.

// Words that Release, ForceUnlock and an expiry write into the inbox of the
// holder's session as they take its key (delete it, or with a LockDelay
// turn it into a marker).
const (
	whyReleased  = "released"
	whyForced    = "forced"
	whyPreempted = "preempted"
	whyExpired   = "expired" // for watchers: the holder's Locker knows already
)

// whyRevoked is the word of a preemptor that asks a holder to make way: it
// takes nothing, and closes the holder's Revoked channels.
const whyRevoked = "revoked"

// inboxKey is where the session of hex hears about its request etcdKey
// created at rev: under prefix "\x00", which no queue's key can start with.
// The revision tells the requests a session makes on one name apart.
func inboxKey(prefix, hex, etcdKey string, rev int64) string {
	return inbox(prefix, hex) + strconv.FormatInt(rev, 10) + "/" + strings.TrimPrefix(etcdKey, prefix)
}

// inbox is the prefix of the inbox keys of the session of hex.
func inbox(prefix, hex string) string { return prefix + "\x00i/" + hex + "/" }

// parseInbox returns the request etcdKey and its create revision that an
// inbox key (without inbox(prefix, hex)) is about.
func parseInbox(prefix, rest string) (etcdKey string, rev int64, ok bool) {
	r, k, ok := strings.Cut(rest, "/")
	if !ok {
		return "", 0, false
	}
	rev, err := strconv.ParseInt(r, 10, 64)
	return prefix + k, rev, err == nil
}

// inboxKey is where l's session hears about l's key.
func (l *lease) inboxKey() string { return inboxKey(l.lk.pfx, l.s.hex, l.etcdKey, l.rev) }

// why is the reason a word of an inbox (as read by a Get, or returned as
// the previous value of a Delete) gives for a key that went: without one,
// its session's end took it.
func why(kvs []*mvccpb.KeyValue) error {
	if len(kvs) == 0 {
		return lmx.ErrSessionLost
	}
	return reason(string(kvs[0].Value))
}

func reason(word string) error {
	switch word {
	case whyReleased:
		return lmx.ErrReleased
	case whyForced:
		return lmx.ErrForced
	case whyExpired:
		return lmx.ErrExpired
	case whyPreempted:
		return lmx.ErrPreempted
	}
	return lmx.ErrSessionLost
}

// watchInbox hands the words of s's inbox to s's leases, from revision from
// until ctx ends. After a failed watch it reads the inbox whole before it
// watches again, so that a word lost to a compaction is still heard.
func (lk *Locker) watchInbox(ctx context.Context, s *session, from int64) {
	pfx := inbox(lk.pfx, s.hex)
	for first := true; ctx.Err() == nil; first = false {
		if !first {
			resp, err := lk.cli.Get(ctx, pfx, clientv3.WithPrefix())
			if err != nil {
				select {
				case <-ctx.Done():
				case <-time.After(100 * time.Millisecond):
				}
				continue
			}
			for _, kv := range resp.Kvs {
				lk.heard(ctx, s, pfx, kv)
			}
			from = resp.Header.Revision + 1
		}
		wch := lk.cli.Watch(ctx, pfx, clientv3.WithPrefix(), clientv3.WithRev(from), clientv3.WithFilterDelete())
		for resp := range wch {
			if resp.Err() != nil {
				break
			}
			for _, ev := range resp.Events {
				lk.heard(ctx, s, pfx, ev.Kv)
			}
		}
	}
}

// heard ends the lease that a word of s's inbox is about, if s still has
// it, and then deletes the word. A lease that is not there is being made
// by its Lock, which finds the word in s.early, or ended by its Unlock or
// Extend: they read and delete the word themselves. The word of an
// expiry, which s wrote itself, is only deleted; a preemptor's ask to make
// way revokes the lease and is deleted.
func (lk *Locker) heard(ctx context.Context, s *session, pfx string, kv *mvccpb.KeyValue) {
	defer func() {
		if h := hearing.Load(); h != nil {
			(*h)()
		}
	}()
	etcdKey, rev, ok := parseInbox(lk.pfx, strings.TrimPrefix(string(kv.Key), pfx))
	if !ok {
		return
	}
	word := string(kv.Value)
	lk.mu.Lock()
	l := s.leases[etcdKey]
	// An ask to make way for a request whose slot is free again came
	// after its lease ended: no Lock will read it.
	early := l == nil && word != whyExpired && (word != whyRevoked || s.inUseLocked(lk.pfx, etcdKey))
	if early {
		s.early[string(kv.Key)] = word
	}
	if l != nil && l.rev == rev && word == whyRevoked {
		l.revokeLocked()
	}
	lk.mu.Unlock()
	switch {
	case word == whyExpired: // the expiry's own word, for watchers
	case word == whyRevoked && !early:
	case l == nil || l.rev != rev || !l.take():
		return
	default:
		l.end(reason(word))
	}
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	lk.cli.Delete(dctx, string(kv.Key))
	cancel()
}

// forget drops what s.early keeps of the word at inboxKey, once the word
// is read.
func (lk *Locker) forget(s *session, inboxKey string) {
	lk.mu.Lock()
	delete(s.early, inboxKey)
	lk.mu.Unlock()
}

// hearing, if set, is called by each word heard once it is handled: a
// test's window onto a word that comes before its lease is made.
var hearing atomic.Pointer[func()]

// waits are the watches of one waiting request: one per key that its grant
// waits on, each from when it was made.
type waits struct {
	lk    *Locker
	s     *session
	mutex bool          // of a request of Limit 1: only deletions matter
	wake  chan struct{} // has a token when a watched key changed

	mu   sync.Mutex
	rev  int64                // the highest revision a change was seen at
	keys map[string]*keyWatch // the watched keys
}

// keyWatch is the watch of one key.
type keyWatch struct{ cancel context.CancelFunc }

func newWaits(lk *Locker, s *session, mutex bool) *waits {
	return &waits{lk: lk, s: s, mutex: mutex, wake: make(chan struct{}, 1), keys: map[string]*keyWatch{}}
}

// watch makes the watched keys targets: it stops the watches of the others
// and starts those of targets not watched yet, and returns the highest
// revision at which one of those started (0 if none did). A change of a
// target after that revision wakes w.wake.
func (w *waits) watch(ctx context.Context, targets []string) (int64, error) {
	w.mu.Lock()
	for k, kw := range w.keys {
		if !slices.Contains(targets, k) {
			kw.cancel()
			delete(w.keys, k)
		}
	}
	var todo []string
	for _, k := range targets {
		if w.keys[k] == nil {
			todo = append(todo, k)
		}
	}
	w.mu.Unlock()
	var from int64
	for _, k := range todo {
		wctx, cancel := context.WithCancel(w.lk.ctx)
		// From the current revision, which etcd serves at once; a watch
		// from a past revision waits for etcd's resync of slow watchers,
		// every 100ms.
		opts := []clientv3.OpOption{clientv3.WithCreatedNotify()}
		if strings.HasSuffix(k, "\x00") {
			// A queue, whose every request a waiter in written mode
			// watches (no request's key ends with NUL); only as they go:
			// no write of a request's key makes another one eligible but
			// with a write of the grant record, which it watches too.
			opts = append(opts, clientv3.WithPrefix(), clientv3.WithFilterPut())
		}
		if w.mutex {
			// A semaphore's waiter wakes when the one before it is granted
			// (its key is written); a mutex's only when a key goes.
			opts = append(opts, clientv3.WithFilterPut())
		}
		wch := w.lk.cli.Watch(wctx, k, opts...)
		var created clientv3.WatchResponse
		var ok bool
		select {
		case created, ok = <-wch:
		case <-ctx.Done():
			cancel()
			return 0, ctx.Err()
		case <-w.s.done:
			cancel()
			return 0, errGone
		}
		if !ok || created.Err() != nil || !created.Created {
			cancel()
			if w.lk.ctx.Err() != nil {
				return 0, lmx.ErrClosed
			}
			return 0, errWatch
		}
		from = max(from, created.Header.Revision)
		kw := &keyWatch{cancel}
		w.mu.Lock()
		w.keys[k] = kw
		w.mu.Unlock()
		go w.forward(k, kw, wch)
	}
	return from, nil
}

// errWatch: etcd ended a watch as it started.
var errWatch = errors.New("lmx/etcd: the watch of a request ended as it started")

// forward wakes w for each change of key that wch brings. When etcd ends
// the watch, it forgets key, so that the next call of watch starts it
// again, and wakes w.
func (w *waits) forward(key string, kw *keyWatch, wch clientv3.WatchChan) {
	for resp := range wch {
		if resp.Err() != nil {
			break
		}
		w.mu.Lock()
		w.rev = max(w.rev, resp.Header.Revision)
		w.mu.Unlock()
		w.poke()
	}
	kw.cancel()
	w.mu.Lock()
	mine := w.keys[key] == kw
	if mine {
		delete(w.keys, key)
	}
	w.mu.Unlock()
	if mine {
		w.poke()
	}
}

func (w *waits) poke() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// seen returns the highest revision at which a watched key changed.
func (w *waits) seen() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.rev
}

// stop ends every watch of w.
func (w *waits) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for k, kw := range w.keys {
		kw.cancel()
		delete(w.keys, k)
	}
}
