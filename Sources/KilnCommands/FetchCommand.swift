import ArgumentParser
import Foundation
import KilnBuild
import KilnFetch
import KilnMachine
import KilnStore
import KilnSupport
import KilnTemplate

struct FetchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fetch",
        abstract: "Download what a template needs into the local caches, so that kiln build --offline can run it.",
        discussion: """
        Every scriptUri and sourceUri goes into the content-addressed download cache (<state dir>/cache/downloads), \
        its sha256Checksum verified; one without a checksum is pinned by the sha256 seen now. A PlatformImage source \
        from the catalog is built if it is not yet. Exit status 1 when anything could not be fetched.
        """
    )

    @Argument(help: "The template JSON file.")
    var template: String

    @Option(help: "Which image template, when an ARM template holds several.")
    var name: String?

    @OptionGroup var parameterOptions: ParameterOptions

    @OptionGroup var stateFlags: StateFlags

    func run() async throws {
        let loaded = TemplateLoader.load(file: template, inputs: try parameterOptions.inputs())
        guard loaded.isValid else {
            DiagnosticPrinter.printDiagnostics(loaded, file: template)
            throw fail(KilnError(.invalidTemplate, "\(template) is not valid; nothing was fetched"))
        }
        let state = stateFlags.state
        let cache = DownloadCache(state: state)
        let templates = loaded.templates.filter { name == nil || $0.template.name == name }
        // Ctrl-C cancels the task: the download in flight ends at once and leaves nothing (Fetcher), and no
        // further download starts.
        let (fetched, unpinned, failures, interrupted) = try await Interruptible.run { () async -> (Int, Int, Int, Bool) in
            var failures = 0
            var unpinned = 0
            var fetched = 0
            for chosen in templates {
                failures += await Self.fetchSource(chosen, state: state) ? 0 : 1
                for download in DownloadCache.downloads(of: chosen) {
                    if Task.isCancelled { return (fetched, unpinned, failures, true) }
                    guard DownloadCache.needsNetwork(download.uri) else {
                        print("\(download.path): \(download.uri) is a local file; builds read it where it is")
                        continue
                    }
                    do throws(KilnError) {
                        let entry = try await cache.fetch(download)
                        fetched += 1
                        let pin = download.sha256Checksum == nil ? "no sha256Checksum: pinned by this sha256" : "sha256Checksum verified"
                        if download.sha256Checksum == nil { unpinned += 1 }
                        print("\(download.path): fetched \(download.uri) (\(ByteSize.format(entry.sizeBytes))) sha256 \(entry.sha256), \(pin)")
                    } catch where error.code == .cancelled || Task.isCancelled {
                        return (fetched, unpinned, failures, true)
                    } catch {
                        failures += 1
                        printError("kiln: error: \(download.path): \(error)")
                    }
                }
            }
            return (fetched, unpinned, failures, Task.isCancelled)
        }
        if interrupted {
            printError("kiln: fetch interrupted after \(fetched) download(s); nothing partial was kept")
            throw ExitCode.failure
        }
        print("\(fetched) download(s) in \(cache.directory), \(unpinned) without a sha256Checksum, \(failures) failure(s)")
        if failures > 0 { throw ExitCode.failure }
    }

    /// Makes sure the source exists locally: a catalog image is built if needed; store references are checked.
    private static func fetchSource(_ loaded: LoadedTemplate, state: StateDirectory) async -> Bool {
        do {
            switch loaded.template.properties.source {
            case .platformImage(let image):
                let catalog = try ImageCatalog.locate(state: state)
                let source = try await catalog.resolve(publisher: image.publisher, offer: image.offer, sku: image.sku, version: image.version) {
                    print($0)
                }
                print("properties.source: \(source.displayName) at \(source.path)")
            case .managedImage(let id):
                guard try StateStore.open(state).managedImage(id: id) != nil else {
                    throw KilnError(.notFound, "properties.source.imageId: expected a managed image \(id) in the local store, found none")
                }
                print("properties.source: \(id) is in the local store")
            case .sharedImageVersion(let id):
                let version = try StateStore.open(state).resolveGalleryVersion(id)
                print("properties.source: \(id) is \(version.id) in the local store")
            }
            return true
        } catch {
            printError("kiln: error: \(error)")
            return false
        }
    }
}
