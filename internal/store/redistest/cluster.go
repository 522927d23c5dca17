package redistest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// clusterLimit bounds creating a cluster and waiting until every node
// agrees that all slots are served. redis-cli polls the join once a second.
const clusterLimit = 30 * time.Second

// Cluster is a Redis Cluster of redis-server child processes, masters only.
type Cluster struct {
	Nodes []*Server
}

// StartCluster starts masters (at least 3, Redis Cluster's minimum) cluster
// nodes, joins them with `redis-cli --cluster create`, and waits until each
// node reports cluster_state:ok and knows every other. opts apply to every
// node (WithUser works; TLS is not supported here).
func StartCluster(t testing.TB, masters int, opts ...Option) *Cluster {
	t.Helper()
	if masters < 3 {
		t.Fatalf("redistest: a Redis Cluster needs at least 3 masters, not %d", masters)
	}
	cli := lookPath(t, "redis-cli")
	c := &Cluster{}
	for range masters {
		n := Start(t, append(opts, withCluster())...)
		if n.opts.tls {
			t.Fatal("redistest: StartCluster does not support TLS")
		}
		c.Nodes = append(c.Nodes, n)
	}

	ctx, cancel := context.WithTimeout(context.Background(), clusterLimit)
	defer cancel()
	args := append([]string{"--cluster", "create"}, c.Addrs()...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	first := c.Nodes[0].opts
	if first.user != "" {
		args = append(args, "--user", first.user)
	}
	cmd := exec.CommandContext(ctx, cli, args...)
	cmd.Env = os.Environ()
	if first.user != "" {
		cmd.Env = append(cmd.Env, "REDISCLI_AUTH="+first.password) // not on the command line
	}
	cmd.WaitDelay = time.Second
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("redistest: redis-cli --cluster create: %v\n%s", err, out)
	}

	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	for _, n := range c.Nodes {
		rdb := n.Client()
		for {
			info, err := rdb.ClusterInfo(ctx).Result()
			if err == nil && clusterReady(info, masters) {
				break
			}
			select {
			case <-ctx.Done():
				t.Fatalf("redistest: cluster node %s not ready within %v: %v\n%s", n.Addr(), clusterLimit, err, info)
			case <-tick.C:
			}
		}
	}
	return c
}

// clusterReady reports whether CLUSTER INFO says the node sees every slot
// served and knows all nodes.
func clusterReady(info string, nodes int) bool {
	fields := map[string]string{}
	for _, line := range strings.Split(info, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok {
			fields[k] = v
		}
	}
	return fields["cluster_state"] == "ok" &&
		fields["cluster_slots_ok"] == "16384" &&
		fields["cluster_known_nodes"] == strconv.Itoa(nodes)
}

// Addrs are the nodes' host:port addresses.
func (c *Cluster) Addrs() []string {
	addrs := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		addrs[i] = n.Addr()
	}
	return addrs
}

// String is for test logs.
func (c *Cluster) String() string { return fmt.Sprintf("redis cluster %v", c.Addrs()) }
