import Logging
import RedisClient

/// The nodes `cluster_nodes` names, asked once at start by every subcommand: the first that
/// answers is the one the cluster is discovered from.
public enum ClusterSeeds {
    /// One seed that answered, with the slot map it sees.
    public struct View: Sendable {
        public let endpoint: RedisEndpoint
        public let topology: ClusterTopology
    }

    /// Asks every seed, in the order given. A seed that cannot be reached is skipped with a log line
    /// (a node may be down while the others serve); every answering seed must be a node in cluster
    /// mode, and all of them of one cluster.
    ///
    /// - Returns: the seeds that answered, in order; empty when none did (a passing fault: `run`
    ///   retries with backoff, a one-shot command says so).
    /// - Throws: `OneShotCommandError`, one line naming the seed, for an operator's error: a seed
    ///   that is not in cluster mode, refuses `INFO cluster` or the login, or belongs to another
    ///   cluster than the first seed that answered.
    public static func survey(_ seeds: [RedisEndpoint], logger: Logger) throws -> [View] {
        var views: [View] = []
        for seed in seeds {
            let connection: RedisConnection
            do {
                connection = try RedisConnection(endpoint: seed, timeoutSeconds: 5)
            } catch let error as RedisError {
                switch error {
                case .connect, .io:
                    logger.warning(
                        "a cluster node named in cluster_nodes does not answer; skipping it",
                        metadata: ["event": "cluster_seed_unreachable", "node": "\(seed)", "error": "\(error)"])
                    continue
                default:
                    throw OneShotCommandError(description: "cluster_nodes: \(seed): \(error)")
                }
            }
            defer { connection.close() }
            let clusterMode: Bool
            do {
                clusterMode = try connection.isClusterEnabled()
            } catch {
                throw OneShotCommandError(
                    description: "cluster_nodes: \(seed): INFO cluster was refused (\(error)); grant +info")
            }
            guard clusterMode else {
                throw OneShotCommandError(
                    description:
                        "cluster_nodes: \(seed) is not in cluster mode (INFO cluster: cluster_enabled is not 1): "
                        + "list only nodes of the cluster, or give a single server with redis instead")
            }
            let topology: ClusterTopology
            do {
                topology = try connection.clusterTopology()
            } catch {
                throw OneShotCommandError(description: "cluster_nodes: reading the slot map from \(seed): \(error)")
            }
            // Node ids are random 160-bit names: views of one cluster share its nodes, two clusters none.
            if let first = views.first, !topology.isSameCluster(as: first.topology) {
                throw OneShotCommandError(
                    description:
                        "cluster_nodes: \(first.endpoint) and \(seed) belong to two different clusters (no node id "
                        + "in common): list nodes of one cluster")
            }
            views.append(View(endpoint: seed, topology: topology))
        }
        return views
    }
}
