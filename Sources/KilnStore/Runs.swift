import Foundation
import GRDB
import KilnSupport

/// A created image template (`kiln template create`): the file as given is copied into the state directory, so
/// later edits of the original change nothing until the template is created again, as with AIB.
public struct TemplateRow: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
    public static let databaseTableName = "templates"

    /// The name in lower case: AIB resource names compare without regard to case.
    public var key: String
    public var name: String
    /// The file the template was created from.
    public var templatePath: String
    /// Kiln's copy, which runs use.
    public var storedPath: String
    /// Which imageTemplates resource of the file (an ARM template may hold several).
    public var resourceName: String
    /// `--parameter` values given at create time, as JSON.
    public var parameters: String
    public var location: String
    public var createdAt: Date

    public init(name: String, templatePath: String, storedPath: String, resourceName: String, parameters: [String: String],
                location: String, createdAt: Date = Date()) {
        key = name.lowercased()
        self.name = name
        self.templatePath = templatePath
        self.storedPath = storedPath
        self.resourceName = resourceName
        self.parameters = JSONColumn.encode(parameters)
        self.location = location
        self.createdAt = createdAt
    }

    public var parameterValues: [String: String] { JSONColumn.decode([String: String].self, parameters) ?? [:] }
}

/// One run as stored: the searchable columns plus the whole run record.
struct RunRow: Codable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "runs"
    var id: String
    var templateKey: String
    var fromCreatedTemplate: Bool
    var runState: String
    var runSubState: String
    var startTime: Date
    var endTime: Date?
    var runDirectory: String
    var owner: String
    var record: String
}

struct RunOutputRow: Codable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "runOutputs"
    var runID: String
    var name: String
    var type: String
    var artifactId: String?
    var artifactUri: String?
    var provisioningState: String
    var path: String?
    var error: String?
}

/// A run as the store knows it.
public struct StoredRun: Sendable {
    public var record: RunRecord
    public var runDirectory: String
    public var fromCreatedTemplate: Bool
    /// The process that runs (or ran) the build.
    public var owner: ProcessIdentity?

    /// Running or Canceling, and the process running it still exists.
    public var isActive: Bool {
        (record.runState == .running || record.runState == .canceling) && owner?.isAlive == true
    }
}

extension StateStore {
    // MARK: templates

    /// Records a created template; a template of that name (in any case) already existing is an error.
    public func createTemplate(_ row: TemplateRow) throws(KilnError) {
        try write("create template \(row.name)") { db in
            if let existing = try TemplateRow.fetchOne(db, key: row.key) {
                throw KilnError(.invalidArgument, "expected a new template name, found an existing template \(existing.name) (created \(existing.createdAt)); delete it first with kiln template delete \(existing.name)")
            }
            try row.insert(db)
        }
    }

    public func template(named name: String) throws(KilnError) -> TemplateRow? {
        try read("template \(name)") { db in try TemplateRow.fetchOne(db, key: name.lowercased()) }
    }

    public func templates() throws(KilnError) -> [TemplateRow] {
        try read("templates") { db in try TemplateRow.order(Column("key")).fetchAll(db) }
    }

    /// Deletes the template and its run history (not one-shot `kiln build` runs that share its name), refusing
    /// while one of its runs is active. Returns the runs that were forgotten, so that the caller can remove their
    /// directories.
    public func deleteTemplate(named name: String) throws(KilnError) -> [StoredRun] {
        try write("delete template \(name)") { db in
            guard try TemplateRow.fetchOne(db, key: name.lowercased()) != nil else {
                throw KilnError(.notFound, "expected an image template named \(name), found none (kiln template list shows them)")
            }
            let own = RunRow.filter(Column("templateKey") == name.lowercased()).filter(Column("fromCreatedTemplate") == true)
            let runs = try own.fetchAll(db).map(StoredRun.init)
            if let active = runs.first(where: \.isActive) {
                throw KilnError(.invalidState, "template \(name) has a run in progress (\(active.record.runID), \(active.record.runState.rawValue)/\(active.record.runSubState.rawValue)); cancel it first with kiln template cancel \(name)")
            }
            try own.deleteAll(db)
            _ = try TemplateRow.deleteOne(db, key: name.lowercased())
            return runs
        }
    }

    // MARK: runs

    /// Inserts or updates a run and its runOutputs. `owner` is the process running it.
    public func saveRun(_ record: RunRecord, runDirectory: String, fromCreatedTemplate: Bool,
                        owner: ProcessIdentity = .current) throws(KilnError) {
        let row = RunRow(id: record.runID, templateKey: record.templateName.lowercased(), fromCreatedTemplate: fromCreatedTemplate,
                         runState: record.runState.rawValue, runSubState: record.runSubState.rawValue, startTime: record.startTime,
                         endTime: record.endTime, runDirectory: runDirectory, owner: owner.description, record: JSONColumn.encode(record))
        try write("record run \(record.runID)") { db in
            try row.upsert(db)
            try RunOutputRow.filter(Column("runID") == record.runID).deleteAll(db)
            for output in record.runOutputs {
                try RunOutputRow(runID: record.runID, name: output.runOutputName, type: output.type, artifactId: output.artifactId,
                                 artifactUri: output.artifactUri, provisioningState: output.provisioningState, path: output.path,
                                 error: output.error).insert(db)
            }
        }
    }

    public func run(id: String) throws(KilnError) -> StoredRun? {
        try read("run \(id)") { db in try RunRow.fetchOne(db, key: id).map(StoredRun.init) }
    }

    /// A template's runs, newest first. `createdOnly`: only runs of the created template (`kiln template run`);
    /// otherwise one-shot `kiln build` runs of a template with that name count too.
    public func runs(template name: String, createdOnly: Bool = true) throws(KilnError) -> [StoredRun] {
        try read("runs of \(name)") { db in
            var request = RunRow.filter(Column("templateKey") == name.lowercased())
            if createdOnly { request = request.filter(Column("fromCreatedTemplate") == true) }
            return try request.order(Column("startTime").desc).fetchAll(db).map(StoredRun.init)
        }
    }

    public func allRuns() throws(KilnError) -> [StoredRun] {
        try read("runs") { db in try RunRow.order(Column("startTime").desc).fetchAll(db).map(StoredRun.init) }
    }

    /// Marks an active run Canceling (what `cancel` does before it signals the process).
    public func markCanceling(runID: String) throws(KilnError) {
        try write("mark run \(runID) Canceling") { db in
            guard var row = try RunRow.fetchOne(db, key: runID), var record = JSONColumn.decode(RunRecord.self, row.record),
                  record.runState == .running else { return }
            record.runState = .canceling
            row.runState = record.runState.rawValue
            row.record = JSONColumn.encode(record)
            try row.update(db)
        }
    }
}

extension StoredRun {
    init(_ row: RunRow) {
        var record = JSONColumn.decode(RunRecord.self, row.record)
            ?? RunRecord(runID: row.id, templateName: row.templateKey, templatePath: "")
        let owner = ProcessIdentity(row.owner)
        // A run whose process is gone without finishing it did not succeed; say so rather than "Running" forever.
        if record.runState == .running || record.runState == .canceling, owner?.isAlive != true {
            record.message = "the Kiln process running this build (pid \(owner?.pid ?? 0)) ended before the run finished"
                + (record.message.isEmpty ? "" : "; last message: \(record.message)")
            record.runState = record.runState == .canceling ? .canceled : .failed
        }
        self.init(record: record, runDirectory: row.runDirectory, fromCreatedTemplate: row.fromCreatedTemplate, owner: owner)
    }
}

/// Resource IDs for things that exist only locally (templates and their runOutputs): a fixed all-zero subscription
/// and the resource group `kiln`, so that tools expecting an ARM ID get one of the right shape.
public enum LocalResource {
    public static let prefix = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/kiln/providers/Microsoft.VirtualMachineImages"

    public static func templateID(_ name: String) -> String { prefix + "/imageTemplates/" + name }

    public static func runOutputID(template: String, runOutput: String) -> String {
        templateID(template) + "/runOutputs/" + runOutput
    }
}
