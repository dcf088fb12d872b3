package etcd

import (
	"cmp"
	"context"
	"math"
	"slices"
	"strconv"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// A key's grant record, and what a queue's requests and its record make of
// who holds: the two modes of a queue.
//
// In read mode, a request holds once the requests created before it allow
// it (decide), which no later arrival can change: a grant is never
// written, and its token is the request's create revision. A request with
// a Priority or a Preempt ask changes that: a later arrival may be granted
// before an earlier one. So such a request writes, in the same transaction
// as its arrival, the key's grant record (PREFIX "\x00g/" KEY, outside the
// queue): the holders it found, each with its token. From then on the
// queue is in written mode, and only the requests named in the record
// hold. A waiter that finds itself the head of the queue (by priority, then
// arrival, with the broker's bound against starvation) and fitting claims
// its grant by writing the record, in a transaction that compares the
// record and the queue unchanged since the read it decided on; the
// record's new revision is its token, newer than any before it.
//
// A named request holds while its key is there with the create revision
// the record names: a holder that ends (Unlock, expiry, Release,
// ForceUnlock, a lost session) only deletes its key, as in read mode, and
// its entry is void. The record rules the queue while the queue has a
// request created at or before the record's last write. Once every such
// request is gone, every request left was created after every token the
// record gave (each is at most the record's revision), no request with a
// Priority or a Preempt ask is left (their arrivals wrote the record), nor
// an owner's re-entry through another Locker (which writes it too), and
// read mode gives tokens that still increase: the queue is back in read
// mode, with the record stale until someone deletes it.

// maxOvertakes bounds how often a waiter is overtaken, as the broker's
// maxBypass does: a waiter granted after 64 later requests of higher
// priority is granted before any later one.
const maxOvertakes = 64

// arriving is the create revision a view gives a request being written:
// later than any, and named in the record it writes as the write's own.
const arriving = math.MaxInt64

// ref names one request: its etcd key and create revision.
type ref struct {
	key string
	rev int64
}

// record is a key's grant record as read: the requests it names as
// holders, with their tokens, and how often each waiter was overtaken.
type record struct {
	mod  int64         // the record's mod revision; 0: there is none
	held map[ref]int64 // token of each named holder
	over map[ref]int   // overtakes of each waiter
}

// grantsKey is where the grant record of queue lives.
func (lk *Locker) grantsKey(queue string) string {
	return lk.grantsUnder(queue[len(lk.pfx) : len(queue)-1])
}

// grantsUnder is the prefix of the grant records of the keys that start
// with prefix.
func (lk *Locker) grantsUnder(prefix string) string { return lk.pfx + "\x00g/" + prefix }

// recordQueue is the queue whose grant record is at etcdKey: grantsKey
// undone.
func (lk *Locker) recordQueue(etcdKey string) string {
	return lk.pfx + strings.TrimPrefix(etcdKey, lk.grantsUnder("")) + "\x00"
}

// readUnder reads, in one transaction, the requests of the keys that start
// with prefix, in create order, and the keys' grant records by queue, and
// returns them with the revision they were read at.
func (lk *Locker) readUnder(ctx context.Context, prefix string) (reqs []*mvccpb.KeyValue, records map[string]*mvccpb.KeyValue, rev int64, err error) {
	resp, err := lk.cli.Txn(ctx).Then(
		clientv3.OpGet(lk.pfx+prefix, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend)),
		clientv3.OpGet(lk.grantsUnder(prefix), clientv3.WithPrefix())).Commit()
	if err != nil {
		return nil, nil, 0, lk.wrap(ctx, err)
	}
	records = map[string]*mvccpb.KeyValue{}
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		records[lk.recordQueue(string(kv.Key))] = kv
	}
	return resp.Responses[0].GetResponseRange().Kvs, records, resp.Header.Revision, nil
}

// encodeRecord writes r for queue as lines "g NAME REV TOKEN" and
// "o NAME REV COUNT", NAME a request's key within its queue; a REV or a
// TOKEN of 0 is the revision of the write itself.
func encodeRecord(queue string, r record) string {
	var b strings.Builder
	line := func(kind byte, f ref, n int64) {
		b.WriteByte(kind)
		b.WriteString(" " + f.key[len(queue):] + " " + strconv.FormatInt(f.rev, 10) + " " + strconv.FormatInt(n, 10) + "\n")
	}
	for f, t := range r.held {
		line('g', f, t)
	}
	for f, n := range r.over {
		line('o', f, int64(n))
	}
	return b.String()
}

// decodeRecord reads the grant record kv of queue (nil: none).
func decodeRecord(queue string, kv *mvccpb.KeyValue) record {
	r := record{held: map[ref]int64{}, over: map[ref]int{}}
	if kv == nil {
		return r
	}
	r.mod = kv.ModRevision
	for l := range strings.Lines(string(kv.Value)) {
		f := strings.Fields(l)
		if len(f) != 4 {
			continue
		}
		rev, err1 := strconv.ParseInt(f[2], 10, 64)
		n, err2 := strconv.ParseInt(f[3], 10, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		if rev == 0 {
			rev = r.mod
		}
		at := ref{queue + f[1], rev}
		switch f[0] {
		case "g":
			if n == 0 {
				n = r.mod
			}
			r.held[at] = n
		case "o":
			r.over[at] = int(n)
		}
	}
	return r
}

// view is what a queue's requests, in create order, and its grant record
// make of it.
type view struct {
	ws      []waiter
	rec     record
	written bool    // the record rules the queue
	tokens  []int64 // by request: its token while it holds, else 0
}

func newView(ws []waiter, rec record) *view {
	v := &view{ws: ws, rec: rec, tokens: make([]int64, len(ws))}
	v.written = rec.mod != 0 && len(ws) > 0 && ws[0].rev <= rec.mod
	for i, w := range ws {
		switch {
		case v.written:
			v.tokens[i] = rec.held[ref{w.key, w.rev}]
		case decide(w, ws[:i]).granted:
			v.tokens[i] = w.rev
		}
	}
	return v
}

// index returns the position of the request me, or -1 if it is gone.
func (v *view) index(me waiter) int {
	for i, w := range v.ws {
		if w.key == me.key && w.rev == me.rev {
			return i
		}
	}
	return -1
}

// waiting reports whether request i waits: it neither holds nor is a
// lock-delay's marker.
func (v *view) waiting(i int) bool { return v.tokens[i] == 0 && !v.ws[i].marker }

// head returns the waiter to be granted first in written mode, or -1: the
// highest priority, then the earliest, among the waiters created no later
// than the earliest one overtaken maxOvertakes times.
func (v *view) head() int {
	cut := int64(math.MaxInt64)
	for i, w := range v.ws {
		if v.waiting(i) && v.rec.over[ref{w.key, w.rev}] >= maxOvertakes {
			cut = min(cut, w.rev)
		}
	}
	best := -1
	for i, w := range v.ws {
		if v.waiting(i) && w.rev <= cut && (best < 0 || w.prio > v.ws[best].prio) {
			best = i
		}
	}
	return best
}

// order returns v's waiters in the order they are to be granted: create
// order in read mode, else head after head.
func (v *view) order() []int {
	var out []int
	if !v.written {
		for i := range v.ws {
			if v.waiting(i) {
				out = append(out, i)
			}
		}
		return out
	}
	rest := &view{ws: v.ws, rec: v.rec, tokens: slices.Clone(v.tokens)}
	for h := rest.head(); h >= 0; h = rest.head() {
		out = append(out, h)
		rest.tokens[h] = -1 // taken out of the waiters
	}
	return out
}

// fits reports whether request i may hold beside the holders: a shared one
// with no exclusive holder, an exclusive one with no shared holder and
// fewer exclusive ones than its limit.
func (v *view) fits(i int) bool {
	excl := 0
	for j, w := range v.ws {
		switch {
		case v.tokens[j] == 0:
		case w.shared && !w.marker:
			if !v.ws[i].shared {
				return false
			}
		default:
			if v.ws[i].shared {
				return false
			}
			excl++
		}
	}
	return excl < v.ws[i].limit
}

// victims returns the holders that must go for request i to fit, the
// lowest in priority first and among equals the newest, as the broker
// chooses them; nil if one of them may not be preempted (NoPreempt, a
// priority not below i's, or a lock-delay's marker).
func (v *view) victims(i int) []waiter {
	me := v.ws[i]
	var shared, excl []waiter
	for j := len(v.ws) - 1; j >= 0; j-- {
		switch w := v.ws[j]; {
		case v.tokens[j] == 0:
		case w.shared && !w.marker:
			shared = append(shared, w)
		default:
			excl = append(excl, w)
		}
	}
	need := excl
	if !me.shared {
		need = shared
		if excess := len(excl) - me.limit + 1; excess > 0 {
			slices.SortStableFunc(excl, func(a, b waiter) int { return cmp.Compare(a.prio, b.prio) })
			need = append(need, excl[:excess]...)
		}
	}
	for _, w := range need {
		if w.noPre || w.marker || w.prio >= me.prio {
			return nil
		}
	}
	return need
}

// next is the record to write for the queue as v has it: its holders
// named with their tokens, and its waiters' overtakes; with grant >= 0,
// request grant holds too, with token, and if that is 0, the write's
// revision as its token, every waiter it overtakes counting one more
// overtake (a re-entry's token is its owner's, and overtakes no one).
func (v *view) next(grant int, token int64) record {
	r := record{held: map[ref]int64{}, over: map[ref]int{}}
	for i, w := range v.ws {
		f := ref{w.key, w.rev}
		if w.rev == arriving {
			f.rev = 0
		}
		switch {
		case v.tokens[i] != 0:
			r.held[f] = v.tokens[i]
		case i == grant:
			r.held[f] = token
		case !w.marker:
			n := v.rec.over[f]
			if grant >= 0 && token == 0 && w.rev < v.ws[grant].rev && w.prio < v.ws[grant].prio {
				n++
			}
			if n > 0 {
				r.over[f] = n
			}
		}
	}
	return r
}
