% rebase('layout')
<div id="post"{{!' data-refresh="2"' if live else ''}}>
<h1>Post <span class="mono">{{post.id}}</span></h1>
<div class="columns">
<section class="card">
  <h2>Text</h2>
  <p class="prewrap">{{post.body}}</p>
</section>
<section class="card">
  <h2>Post</h2>
  <dl class="facts">
    <dt>author</dt><dd class="mono">{{data["author_id"]}}</dd>
    <dt>created</dt><dd>{{stamp(post.created_at)}} <span class="muted">{{ago(post.created_at)}}</span></dd>
    <dt>hashtags</dt><dd>{{" ".join("#" + tag for tag in data["hashtags"]) or "—"}}</dd>
    <dt>likes</dt><dd>{{data["likes"]}}</dd>
    <dt>comments</dt><dd>{{data["comments"]}}</dd>
    <dt>shares</dt><dd>{{data["shares"]}}</dd>
    <dt>engagement score</dt><dd>{{data["engagement_score"]}}</dd>
  </dl>
</section>
</div>
<h2>Media</h2>
% if not media:
<p class="empty">No media. Upload an image with <code>POST /api/v1/posts/{{post.id}}/media</code>.</p>
% end
% for item in media:
% urls = item.urls()
<section class="card{{' ok' if item.status == 'ready' else ' bad' if item.status == 'rejected' else ''}}" id="media-{{item.id}}">
  <h3>{{item.filename or "upload"}} <span class="status status-{{item.status}}">{{item.status}}</span></h3>
  % if item.status == "ready":
  <p><a href="{{urls['web']}}"><img class="thumb" src="{{urls['thumb_320']}}" alt="{{item.filename or 'image'}}" loading="lazy"></a></p>
  <p class="muted">{{item.width}}×{{item.height}} · <a href="{{urls['web']}}">web</a> · <a href="{{urls['thumb_640']}}">640</a> · <a href="{{urls['thumb_320']}}">320</a></p>
  % elif item.status == "rejected":
  <p class="error">{{item.error}}</p>
  % else:
  <progress></progress>
  % end
  <p class="hint">{{item.size_bytes}} bytes, uploaded {{ago(item.created_at)}}
  % if item.job_id:
  · <a href="/jobs/{{item.job_id}}">job</a>
  % end
  </p>
</section>
% end
</div>
