/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Socket-level service load balancing: translate a connect() to a service
 * frontend into a connect() to one of its backends, once per socket, so
 * established traffic pays nothing per packet.
 *
 * Attached to a cgroup2 directory (the node's subtree); only processes in
 * that subtree are translated.
 */
#include "lb4.h"

/* Return values of cgroup sock_addr programs. */
#define SYS_REJECT  0
#define SYS_PROCEED 1

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/*
 * Translate ctx's destination when it is a service frontend.
 * A frontend with no backend refuses the connect at once.
 */
static __always_inline int sock4_xlate(struct bpf_sock_addr *ctx)
{
	__be32 address = ctx->user_ip4;
	__be16 port = (__be16)ctx->user_port;
	__u8 proto = (__u8)ctx->protocol;
	struct lb4_service *svc;
	struct lb4_backend *backend;

	svc = lb4_lookup_service(address, port, proto);
	if (!svc)
		return SYS_PROCEED;
	backend = lb4_select_backend(svc, address, port, proto);
	if (!backend)
		return SYS_REJECT;
	ctx->user_ip4 = backend->address;
	ctx->user_port = backend->port;
	return SYS_PROCEED;
}

SEC("cgroup/connect4")
int berth_connect4(struct bpf_sock_addr *ctx)
{
	return sock4_xlate(ctx);
}
