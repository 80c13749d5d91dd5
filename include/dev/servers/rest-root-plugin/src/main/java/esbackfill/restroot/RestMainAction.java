package esbackfill.restroot;

import org.elasticsearch.Build;
import org.elasticsearch.client.internal.node.NodeClient;
import org.elasticsearch.cluster.ClusterState;
import org.elasticsearch.cluster.metadata.Metadata;
import org.elasticsearch.cluster.service.ClusterService;
import org.elasticsearch.index.IndexVersion;
import org.elasticsearch.rest.BaseRestHandler;
import org.elasticsearch.rest.RestRequest;
import org.elasticsearch.rest.RestResponse;
import org.elasticsearch.rest.RestStatus;
import org.elasticsearch.xcontent.XContentBuilder;

import java.util.List;
import java.util.function.Supplier;

import static org.elasticsearch.rest.RestRequest.Method.GET;
import static org.elasticsearch.rest.RestRequest.Method.HEAD;

/**
 * Why this exists: Elastic's "integ-test-zip" distribution, which the tests run, omits the {@code rest-root}
 * module (Elasticsearch 8.x and 9.x; 7.x still had this endpoint in the server), so {@code GET /} answers 405
 * and the Python client's {@code info()} and {@code ping()} fail. This handler serves {@code GET /} and
 * {@code HEAD /} with the same document as that module (modules/rest-root: RestMainAction,
 * TransportMainAction, MainResponse), built directly from the local cluster state instead of going
 * through a transport action.
 *
 * <p>This file compiles unchanged against 8.19 and 9.x; only the plugin class that registers it differs
 * (src/es8 and src/es9, chosen by a Maven profile).
 */
final class RestMainAction extends BaseRestHandler {

    private final Supplier<ClusterService> clusterService;

    RestMainAction(Supplier<ClusterService> clusterService) {
        this.clusterService = clusterService;
    }

    @Override
    public List<Route> routes() {
        return List.of(new Route(GET, "/"), new Route(HEAD, "/"));
    }

    @Override
    public String getName() {
        return "main_action";
    }

    @Override
    public boolean canTripCircuitBreaker() {
        return false;
    }

    @Override
    protected RestChannelConsumer prepareRequest(RestRequest request, NodeClient client) {
        return channel -> {
            // as TransportMainAction
            ClusterService service = clusterService.get();
            ClusterState state = service.state();
            Metadata metadata = state.metadata();
            String clusterUuid = metadata.clusterUUIDCommitted() ? metadata.clusterUUID() : Metadata.UNKNOWN_CLUSTER_UUID;
            Build build = Build.current();

            XContentBuilder builder = channel.newBuilder();
            // as RestMainAction: pretty by default, ?pretty=false disables it
            if (request.hasParam("pretty") == false) {
                builder.prettyPrint().lfAtEnd();
            }
            // as MainResponse.toXContent
            builder.startObject();
            builder.field("name", service.getNodeName());
            builder.field("cluster_name", state.getClusterName().value());
            builder.field("cluster_uuid", clusterUuid);
            builder.startObject("version")
                .field("number", build.qualifiedVersion())
                .field("build_flavor", build.flavor())
                .field("build_type", build.type().displayName())
                .field("build_hash", build.hash())
                .field("build_date", build.date())
                .field("build_snapshot", build.isSnapshot())
                .field("lucene_version", IndexVersion.current().luceneVersion().toString())
                .field("minimum_wire_compatibility_version", build.minWireCompatVersion())
                .field("minimum_index_compatibility_version", build.minIndexCompatVersion())
                .endObject();
            builder.field("tagline", "You Know, for Search");
            builder.endObject();
            channel.sendResponse(new RestResponse(RestStatus.OK, builder));
        };
    }
}
