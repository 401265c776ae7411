import Foundation
import GRDB
import KilnSupport

/// Kiln's state in SQLite (state-dir/kiln.sqlite): templates, runs and their runOutputs, the managed-image store and
/// the local galleries. Disk artifacts live beside it under store/. Safe under concurrent processes: SQLite's file
/// locks with a busy timeout, and every read-modify-write (version allocation, template creation) in one IMMEDIATE
/// transaction. A DatabaseQueue (rollback journal), not a database: a database switches the file to WAL and writes to it
/// when it opens, before Kiln could check the file's health.
public final class StateStore: Sendable {
    public static let fileName = "kiln.sqlite"

    public let state: StateDirectory
    public let path: String
    let database: DatabaseQueue

    private init(state: StateDirectory, path: String, database: DatabaseQueue) {
        self.state = state
        self.path = path
        self.database = database
    }

    /// Opens (creating on first use) the state database. A file that is not a healthy SQLite database is an error
    /// that leaves the file untouched: nothing is recreated or dropped silently.
    public static func open(_ state: StateDirectory) throws(KilnError) -> StateStore {
        _ = try state.create()
        let path = state.path + "/" + fileName
        let existed = FileManager.default.fileExists(atPath: path)
        var configuration = Configuration()
        configuration.busyMode = .timeout(60)
        configuration.label = "kiln-state"
        configuration.prepareDatabase { db in
            try db.execute(sql: "PRAGMA foreign_keys = ON")
        }
        let database: DatabaseQueue
        do {
            database = try DatabaseQueue(path: path, configuration: configuration)
        } catch {
            throw corrupt(path, error)
        }
        if existed {
            let verdict: String?
            do {
                verdict = try database.read { db in try String.fetchOne(db, sql: "PRAGMA quick_check") }
            } catch {
                throw corrupt(path, error)
            }
            guard verdict == "ok" else { throw corrupt(path, verdict ?? "no answer from PRAGMA quick_check") }
        }
        do {
            try migrator.migrate(database)
        } catch {
            throw corrupt(path, error)
        }
        return StateStore(state: state, path: path, database: database)
    }

    private static func corrupt(_ path: String, _ cause: Any) -> KilnError {
        KilnError(.invalidState, """
            the state database \(path) is not a healthy SQLite database (\(cause)). Kiln left it as it is. \
            Restore it from a backup, or move it aside to start with empty state: the templates, run history, \
            managed images and gallery versions it records would then be forgotten (their files under \
            \((path as NSString).deletingLastPathComponent)/store stay on disk)
            """)
    }

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.create(table: "templates") { t in
                t.primaryKey("key", .text)
                t.column("name", .text).notNull()
                t.column("templatePath", .text).notNull()
                t.column("storedPath", .text).notNull()
                t.column("resourceName", .text).notNull()
                t.column("parameters", .text).notNull()
                t.column("location", .text).notNull()
                t.column("createdAt", .datetime).notNull()
            }
            try db.create(table: "runs") { t in
                t.primaryKey("id", .text)
                t.column("templateKey", .text).notNull().indexed()
                t.column("fromCreatedTemplate", .boolean).notNull()
                t.column("runState", .text).notNull()
                t.column("runSubState", .text).notNull()
                t.column("startTime", .datetime).notNull()
                t.column("endTime", .datetime)
                t.column("runDirectory", .text).notNull()
                t.column("owner", .text).notNull()
                t.column("record", .text).notNull()
            }
            try db.create(table: "runOutputs") { t in
                t.column("runID", .text).notNull().references("runs", onDelete: .cascade)
                t.column("name", .text).notNull()
                t.column("type", .text).notNull()
                t.column("artifactId", .text)
                t.column("artifactUri", .text)
                t.column("provisioningState", .text).notNull()
                t.column("path", .text)
                t.column("error", .text)
                t.primaryKey(["runID", "name"])
            }
            try db.create(table: "managedImages") { t in
                t.primaryKey("key", .text)
                t.column("id", .text).notNull()
                t.column("location", .text).notNull()
                t.column("tags", .text).notNull()
                t.column("path", .text).notNull()
                t.column("format", .text).notNull()
                t.column("firmware", .text).notNull()
                t.column("osType", .text)
                t.column("hasCloudInit", .boolean)
                t.column("virtualSizeBytes", .integer).notNull()
                t.column("runID", .text).notNull()
                t.column("source", .text).notNull()
                t.column("createdAt", .datetime).notNull()
            }
            try db.create(table: "galleries") { t in
                t.primaryKey("key", .text)
                t.column("id", .text).notNull()
                t.column("createdAt", .datetime).notNull()
            }
            try db.create(table: "galleryImages") { t in
                t.primaryKey("key", .text)
                t.column("id", .text).notNull()
                t.column("galleryKey", .text).notNull().references("galleries")
                t.column("osType", .text)
                t.column("firmware", .text).notNull()
                t.column("createdAt", .datetime).notNull()
            }
            try db.create(table: "galleryVersions") { t in
                t.column("imageKey", .text).notNull().references("galleryImages")
                t.column("major", .integer).notNull()
                t.column("minor", .integer).notNull()
                t.column("patch", .integer).notNull()
                t.column("id", .text).notNull()
                t.column("state", .text).notNull()
                t.column("owner", .text).notNull()
                t.column("excludeFromLatest", .boolean).notNull()
                t.column("storageAccountType", .text).notNull()
                t.column("targetRegions", .text).notNull()
                t.column("tags", .text).notNull()
                t.column("path", .text).notNull()
                t.column("format", .text).notNull()
                t.column("firmware", .text).notNull()
                t.column("osType", .text)
                t.column("hasCloudInit", .boolean)
                t.column("virtualSizeBytes", .integer).notNull()
                t.column("runID", .text).notNull()
                t.column("source", .text).notNull()
                t.column("createdAt", .datetime).notNull()
                t.primaryKey(["imageKey", "major", "minor", "patch"])
            }
        }
        return migrator
    }

    /// A read, with GRDB's errors turned into Kiln's.
    func read<T>(_ what: String, _ body: (Database) throws -> T) throws(KilnError) -> T {
        do {
            return try database.read(body)
        } catch let error as KilnError {
            throw error
        } catch {
            throw KilnError(.io, "cannot read \(what) from the state database \(path)", cause: error)
        }
    }

    /// A write in one IMMEDIATE transaction: concurrent Kiln processes take turns (SQLite's busy timeout), so a
    /// read-modify-write inside `body` sees no interleaved change.
    func write<T>(_ what: String, _ body: (Database) throws -> T) throws(KilnError) -> T {
        do {
            return try database.writeWithoutTransaction { db in
                var result: T?
                try db.inTransaction(.immediate) {
                    result = try body(db)
                    return .commit
                }
                guard let result else { throw KilnError(.internalError, "no result from a state database write") }
                return result
            }
        } catch let error as KilnError {
            throw error
        } catch {
            throw KilnError(.io, "cannot \(what) in the state database \(path)", cause: error)
        }
    }

    /// Where artifacts of the local stores live (below the state directory).
    public var storePath: String { state.path + "/store" }
}

/// JSON text columns.
enum JSONColumn {
    static func encode<T: Encodable>(_ value: T) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return (try? encoder.encode(value)).map { String(decoding: $0, as: UTF8.self) } ?? "null"
    }

    static func decode<T: Decodable>(_ type: T.Type, _ text: String) -> T? {
        try? JSONDecoder().decode(type, from: Data(text.utf8))
    }
}
