package lmx

import (
	"context"
	"errors"
	"strings"

	"github.com/oklog/ulid/v2"
)

// ErrNoLeader is returned by Election.Leader when nobody leads.
var ErrNoLeader = errors.New("lmx: election has no leader")

// ElectionDoor is what an Election needs of a door: locks, introspection and
// watch. *Broker and *Client are such doors.
type ElectionDoor interface {
	Locker
	Admin
	Watcher
}

// An Election elects one leader at a time among candidates that campaign
// under the same name, through any door to one lock table (the model is
// etcd's concurrency.Election). Leadership is a lease of the key
// "lmx-election/NAME": candidates queue for it in order, so when a leader
// resigns or is lost, the longest-waiting candidate leads next.
//
// An Election is one candidate; it is safe for concurrent use.
type Election struct {
	door ElectionDoor
	key  string
	id   string // tells this candidate's leadership from another's of the same value
}

// NewElection returns a candidate in the election called name.
func NewElection(door ElectionDoor, name string) *Election {
	return &Election{door: door, key: "lmx-election/" + name, id: ulid.Make().String()}
}

// Campaign waits until this candidate leads, with value as what Leader and
// Observe report of it, and returns the leadership: its Done channel closes
// when leadership ends (Resign, or a loss: expiry, a lost session). opts are
// those of Lock (TTL and KeepAlive make a leader that hangs lose its
// leadership). A campaign cut short by ctx returns ctx.Err().
func (e *Election) Campaign(ctx context.Context, value string, opts ...LockOption) (*Lease, error) {
	return e.door.Lock(ctx, e.key, append(opts, Owner(e.id+" "+value))...)
}

// Resign ends leadership, as leadership.Unlock does: the next candidate leads.
func (e *Election) Resign(ctx context.Context, leadership *Lease) error {
	return leadership.Unlock(ctx)
}

// Leader returns the value of the current leader, or ErrNoLeader.
func (e *Election) Leader(ctx context.Context) (string, error) {
	ki, err := e.door.Inspect(ctx, e.key)
	if err != nil {
		return "", err
	}
	if len(ki.Holders) == 0 {
		return "", ErrNoLeader
	}
	return leaderValue(ki.Holders[0].Owner), nil
}

// Observe streams the value of each new leader, starting with the current
// one if there is one, until ctx ends; then it closes the channel. A slow
// reader misses intermediate leaders, never the latest one.
func (e *Election) Observe(ctx context.Context) (<-chan string, error) {
	events, err := e.door.Watch(ctx, e.key)
	if err != nil {
		return nil, err
	}
	out := make(chan string, 1)
	leader, err := e.Leader(ctx)
	switch {
	case err == nil:
		out <- leader
	case !errors.Is(err, ErrNoLeader):
		return nil, err
	}
	go func() {
		defer close(out)
		for ev := range events {
			var leader string
			switch {
			case ev.Type == EventLagged: // the newest grant may be among those missed
				var err error
				if leader, err = e.Leader(ctx); err != nil {
					continue
				}
			case ev.Key == e.key && ev.Type == EventAcquired:
				leader = leaderValue(ev.Owner)
			default:
				continue
			}
			select { // keep only the newest leader if the reader is behind
			case <-out:
			default:
			}
			out <- leader
		}
	}()
	return out, nil
}

// leaderValue returns the value part of a leadership's owner.
func leaderValue(owner string) string {
	_, v, _ := strings.Cut(owner, " ")
	return v
}
