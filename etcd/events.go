package etcd

import (
	"context"
	"strings"
	"time"

	"github.com/lmx-go/lmx"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

var _ lmx.Watcher = (*Locker)(nil)

// Watch streams the events of the keys that start with prefix, from now
// until ctx ends or the Locker closes; then it closes the channel. It
// watches the Locker's whole prefix in etcd and keeps the queues of the
// keys under prefix in memory, with their grant records, so that it sees a
// request granted when the requests before it go or the record names it.
// Why a lease ended is read from the words that Release, ForceUnlock, a
// preemption and an expiry write into the holder's inbox as they delete
// its key; a key deleted without one was released by its holder if its
// session is still alive, and otherwise lost with its session. A closing
// broker does not happen here. Events are buffered
// up to lmx.DefaultWatchBuffer; a watcher that falls behind misses events
// and gets an lmx.EventLagged that counts them.
func (lk *Locker) Watch(ctx context.Context, prefix string) (<-chan lmx.Event, error) {
	if err := lk.live(); err != nil {
		return nil, err
	}
	reqs, records, rev, err := lk.readUnder(ctx, prefix)
	if err != nil {
		return nil, err
	}
	ew := &eventWatch{lk: lk, prefix: prefix, queues: map[string][]waiter{}, records: records,
		held: map[string]int64{}, out: make(chan lmx.Event, lmx.DefaultWatchBuffer)}
	for _, kv := range reqs {
		if q, ok := ew.queueOf(string(kv.Key)); ok {
			ew.queues[q] = append(ew.queues[q], decode(kv))
		}
	}
	for q := range ew.queues {
		ew.regrant(q, false)
	}
	wctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(lk.ctx, cancel)
	wch := lk.cli.Watch(wctx, lk.pfx, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	go func() {
		defer close(ew.out)
		defer stop()
		defer cancel()
		for resp := range wch {
			if resp.Err() != nil {
				return // compacted past, or cancelled: the stream cannot go on whole
			}
			ew.apply(wctx, resp.Events)
		}
	}()
	return ew.out, nil
}

// eventWatch is the state of one Watch.
type eventWatch struct {
	lk      *Locker
	prefix  string
	queues  map[string][]waiter         // by etcd queue prefix, in create order
	records map[string]*mvccpb.KeyValue // grant records, by etcd queue prefix
	held    map[string]int64            // tokens of granted requests, by etcd key
	out     chan lmx.Event
	missed  uint64
}

// queueOf returns the queue of a request's etcd key, if it is one under
// the watched prefix.
func (ew *eventWatch) queueOf(etcdKey string) (string, bool) {
	q, ok := queuePrefix(ew.lk.pfx, etcdKey)
	if !ok || !strings.HasPrefix(q[len(ew.lk.pfx):], ew.prefix) {
		return "", false
	}
	return q, true
}

// apply follows the events of a watch response, which holds whole
// revisions: the words of an inbox written with a deletion are in the same
// revision as the deletion.
func (ew *eventWatch) apply(ctx context.Context, evs []*clientv3.Event) {
	for len(evs) > 0 {
		n := 1
		for n < len(evs) && evs[n].Kv.ModRevision == evs[0].Kv.ModRevision {
			n++
		}
		ew.revision(ctx, evs[:n])
		evs = evs[n:]
	}
}

// revision follows the events of one revision.
func (ew *eventWatch) revision(ctx context.Context, evs []*clientv3.Event) {
	words := map[string]string{} // by the etcd key they are about
	inboxes := ew.lk.pfx + "\x00i/"
	for _, ev := range evs {
		k := string(ev.Kv.Key)
		if ev.Type != mvccpb.PUT || !strings.HasPrefix(k, inboxes) {
			continue
		}
		if _, rest, ok := strings.Cut(k[len(inboxes):], "/"); ok {
			if about, _, ok := parseInbox(ew.lk.pfx, rest); ok {
				words[about] = string(ev.Kv.Value)
			}
		}
	}
	touched := map[string]bool{}
	records := ew.lk.grantsUnder(ew.prefix)
	for _, ev := range evs {
		k := string(ev.Kv.Key)
		if strings.HasPrefix(k, records) {
			q := ew.lk.recordQueue(k)
			if ev.Type == mvccpb.PUT {
				ew.records[q] = ev.Kv
			} else {
				delete(ew.records, q)
			}
			touched[q] = true
			continue
		}
		q, ok := ew.queueOf(k)
		if !ok {
			continue
		}
		ws := ew.queues[q]
		i := 0
		for i < len(ws) && ws[i].key != k {
			i++
		}
		switch {
		case ev.Type == mvccpb.PUT && i == len(ws):
			ew.queues[q] = append(ws, decode(ev.Kv))
			touched[q] = true
		case ev.Type == mvccpb.PUT && decode(ev.Kv).marker && ew.held[k] != 0:
			// The lease ended with a LockDelay: its key holds on as a marker.
			ew.emit(ew.ended(ctx, ws[i], words[k]), q, ws[i], ew.held[k])
			delete(ew.held, k)
			ws[i] = decode(ev.Kv)
		case ev.Type == mvccpb.DELETE && i < len(ws):
			if t := ew.held[k]; t != 0 {
				delete(ew.held, k)
				ew.emit(ew.ended(ctx, ws[i], words[k]), q, ws[i], t)
			}
			ew.queues[q] = append(ws[:i:i], ws[i+1:]...)
			if len(ew.queues[q]) == 0 {
				delete(ew.queues, q)
			}
			touched[q] = true
		}
	}
	for q := range touched {
		ew.regrant(q, true)
	}
}

// ended is the event type of a granted request deleted with word (or "").
func (ew *eventWatch) ended(ctx context.Context, w waiter, word string) lmx.EventType {
	switch word {
	case whyReleased:
		return lmx.EventReleased
	case whyForced:
		return lmx.EventForced
	case whyExpired:
		return lmx.EventExpired
	case whyPreempted:
		return lmx.EventPreempted
	}
	// etcd answers a live lease's remaining time in whole seconds, rounded
	// down (0: under a second left), and -1 for a lease that is gone.
	ttl, err := ew.lk.cli.TimeToLive(ctx, w.lease)
	if err == nil && ttl.TTL >= 0 {
		return lmx.EventReleased
	}
	return lmx.EventSessionLost
}

// regrant marks the requests of queue q that hold now, as its requests and
// its grant record have it, and emits their acquisition if emit.
func (ew *eventWatch) regrant(q string, emit bool) {
	ws := ew.queues[q]
	v := newView(ws, decodeRecord(q, ew.records[q]))
	for i, w := range ws {
		if ew.held[w.key] != 0 || v.tokens[i] == 0 || w.marker {
			continue
		}
		ew.held[w.key] = v.tokens[i]
		if emit {
			ew.emit(lmx.EventAcquired, q, w, v.tokens[i])
		}
	}
}

// emit delivers an event of request w of queue q, granted with token, or
// counts it as missed when the buffer is full; a lag is reported before the
// next event that fits.
func (ew *eventWatch) emit(t lmx.EventType, q string, w waiter, token int64) {
	now := time.Now().Truncate(time.Millisecond)
	ev := lmx.Event{Type: t, Key: q[len(ew.lk.pfx) : len(q)-1], ID: w.id, Token: uint64(token), Owner: w.owner, Time: now}
	if ew.missed > 0 {
		select {
		case ew.out <- lmx.Event{Type: lmx.EventLagged, Time: now, Missed: ew.missed}:
			ew.missed = 0
		default:
			ew.missed++
			return
		}
	}
	select {
	case ew.out <- ev:
	default:
		ew.missed++
	}
}
