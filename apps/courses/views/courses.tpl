% rebase('layout')
<h1>Courses</h1>
% if not courses:
<p class="empty">No courses yet. Create one with <code>POST /api/v1/courses</code>.</p>
% else:
<table class="jobs">
  <thead><tr><th>course</th><th class="r">lessons</th><th>created</th><th>id</th></tr></thead>
  <tbody>
  % for course in courses:
    <tr id="course-{{course.id}}">
      <td>{{course.title}}</td>
      <td class="r">{{lessons.get(course.id, 0)}}</td>
      <td class="nowrap" title="{{stamp(course.created_at)}}">{{ago(course.created_at)}}</td>
      <td class="mono">{{course.id}}</td>
    </tr>
  % end
  </tbody>
</table>
% end

<h2>Enrollments</h2>
% if not enrollments:
<p class="empty">No enrollments yet.</p>
% else:
<table class="jobs">
  <thead><tr><th>learner</th><th>course</th><th>progress</th><th>certificate</th><th>enrolled</th></tr></thead>
  <tbody>
  % for enrollment in enrollments:
  % certificate = certificates.get(enrollment.id)
    <tr id="enrollment-{{enrollment.id}}">
      <td>{{enrollment.user.name or enrollment.user.email}}</td>
      <td>{{enrollment.course.title}}</td>
      <td><progress max="100" value="{{enrollment.progress}}">{{enrollment.progress}}%</progress> {{enrollment.progress}}%</td>
      <td>
      % if certificate:
        <a href="{{certificate.url}}" class="mono">{{certificate.code}}</a>
      % elif enrollment.completed_at:
        <span class="muted">being issued</span>
      % else:
        <span class="muted">—</span>
      % end
      </td>
      <td class="nowrap" title="{{stamp(enrollment.created_at)}}">{{ago(enrollment.created_at)}}</td>
    </tr>
  % end
  </tbody>
</table>
% end
