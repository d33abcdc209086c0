import RedisClient
import SnapshotStore

extension RedisConnection {
    /// Redis's clock in Unix milliseconds (`TIME`): expiries are judged by the server's clock. The
    /// engine and the tests both read it here.
    public func serverTimeMilliseconds() throws -> Int64 {
        let reply = try command("TIME")
        // Checked arithmetic: an odd reply is an error, never a trap.
        guard let parts = reply.elements, parts.count == 2, let seconds = parts[0].text.flatMap({ Int64($0) }),
            let micros = parts[1].text.flatMap({ Int64($0) }), seconds >= 0, (0..<1_000_000).contains(micros),
            case (let milliseconds, let overflow) = seconds.multipliedReportingOverflow(by: 1000), !overflow
        else {
            throw OneShotCommandError(description: "TIME was refused: \(reply.errorMessage ?? "unexpected reply")")
        }
        return milliseconds + micros / 1000
    }

    /// Calls `body` with each page of keys under `prefix` (`SCAN … MATCH <escaped prefix>*`).
    func scanKeys(under prefix: [UInt8], _ body: ([[UInt8]]) throws -> Void) throws {
        var cursor: [UInt8] = Array("0".utf8)
        repeat {
            let reply = try command(ChangeFeed.scanCommand(cursor: cursor, keyPrefix: prefix))
            guard let items = reply.elements, items.count == 2, let next = items[0].bytes, let keys = items[1].elements
            else {
                throw OneShotCommandError(description: "SCAN failed: \(reply.errorMessage ?? "unexpected reply")")
            }
            // MATCH is a glob over the escaped prefix; the bytes decide, as for invalidations.
            try body(keys.compactMap(\.bytes).filter { $0.starts(with: prefix) })
            cursor = next
        } while cursor != Array("0".utf8)
    }
}

/// Opens the snapshot and connects to Redis for a one-shot command (restore, verify, purge), the
/// snapshot first so that a bad path stops the command before Redis is touched. Errors become a
/// `OneShotCommandError` with the message to print.
func openSnapshotAndRedis(
    snapshotPath: String, mode: SnapshotStore.Mode, endpoint: RedisEndpoint
) throws -> (SnapshotStore, RedisConnection) {
    do {
        let store = try SnapshotStore(path: snapshotPath, mode: mode)
        return (store, try RedisConnection(endpoint: endpoint, timeoutSeconds: 10))
    } catch {
        throw OneShotCommandError(description: "\(error)")
    }
}

/// Opens the snapshot and connects to Redis, a single server or every master of a cluster
/// (`OneShotRedis`), the snapshot first so that a bad path stops the command before Redis is
/// touched. Errors become a `OneShotCommandError` with the message to print.
func openSnapshotAndTarget(
    snapshotPath: String, mode: SnapshotStore.Mode, endpoint: RedisEndpoint, clusterSeeds: [RedisEndpoint]
) throws -> (SnapshotStore, OneShotRedis) {
    let store: SnapshotStore
    do {
        store = try SnapshotStore(path: snapshotPath, mode: mode)
    } catch {
        throw OneShotCommandError(description: "\(error)")
    }
    return (store, try OneShotRedis.connect(endpoint: endpoint, clusterSeeds: clusterSeeds))
}
