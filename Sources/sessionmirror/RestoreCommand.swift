import ArgumentParser

struct RestoreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "restore", abstract: "Put every valid session from the snapshot back into Redis.")
    func run() throws { throw fail("restore is not built yet") }
}
struct VerifyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "verify", abstract: "Compare the snapshot with Redis.")
    func run() throws { throw fail("verify is not built yet") }
}
struct PurgeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "purge", abstract: "Delete sessions from Redis and the snapshot together.")
    func run() throws { throw fail("purge is not built yet") }
}
